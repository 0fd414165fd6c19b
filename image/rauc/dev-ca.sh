#!/usr/bin/env bash
# Mints a DEVELOPMENT signing PKI for RAUC bundles into DIR (made if missing):
#   ca.cert.pem      the CA: the keyring of test images (/etc/rauc/keyring.pem)
#   ca.key.pem       its key (only needed to mint more signing certificates)
#   signing.cert.pem the certificate that signs bundles, issued by the CA
#   signing.key.pem  its key
# For tests and CI images only: nothing it makes is ever committed, and release images
# trust a release CA whose keys never enter the repository.
#
#   image/rauc/dev-ca.sh DIR [CN]      (CN: the CA's common name, default "appliance dev CA")
set -euo pipefail

dir=${1:?usage: dev-ca.sh DIR [CN]}
cn=${2:-appliance dev CA}
mkdir -p "$dir"
umask 077
cd "$dir"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/O=appliance development/CN=$cn" -keyout ca.key.pem -out ca.cert.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/O=appliance development/CN=$cn signing" -keyout signing.key.pem -out signing.csr.pem \
    2>/dev/null
# No extendedKeyUsage: RAUC 1.8 checks the S/MIME signing purpose, which codeSigning fails.
openssl x509 -req -in signing.csr.pem -CA ca.cert.pem -CAkey ca.key.pem -CAcreateserial \
    -days 3650 -out signing.cert.pem \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n') \
    2>/dev/null
rm -f signing.csr.pem ca.cert.srl
chmod 0644 ca.cert.pem signing.cert.pem
