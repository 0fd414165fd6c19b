#!/usr/bin/env bash
# Mints the fleet's PKI with openssl: a CA, the broker's server certificate and one client
# certificate per device id / operator / bridge. The certificate's CN is the MQTT identity
# (mosquitto: use_identity_as_username), so the CN must be exactly the device id.
#
#   fleet/pki/mint.sh [-o DIR] [--server HOST]... [--operator NAME]... [--bridge NAME]... DEVICE_ID...
#
# DIR defaults to ./pki-out. Re-running keeps the CA and every existing key/certificate and
# only adds what is missing. Keys are EC P-256, unencrypted, mode 0600 (umask 077): no
# passphrase or other secret ever goes through argv. Files: ca.crt ca.key, server.crt
# server.key, <name>.crt <name>.key. Copy only <name>.crt/.key and ca.crt to a device.
set -euo pipefail
umask 077

OUT=./pki-out
SERVERS=()
OPERATORS=()
BRIDGES=()
DEVICES=()
DAYS=${MINT_DAYS:-825}

die() {
    printf 'mint.sh: %s\n' "$*" >&2
    exit 2
}
valid_name() { # a device id usable as an MQTT topic level and ACL %u: no / + # or spaces
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]
}

while (($#)); do
    case $1 in
        -o) OUT=${2:?-o needs a directory}; shift 2 ;;
        --server) SERVERS+=("${2:?--server needs a host name}"); shift 2 ;;
        --operator) OPERATORS+=("${2:?--operator needs a name}"); shift 2 ;;
        --bridge) BRIDGES+=("${2:?--bridge needs a name}"); shift 2 ;;
        -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'" ;;
        *) DEVICES+=("$1"); shift ;;
    esac
done
((${#SERVERS[@]})) || SERVERS=(localhost)
command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"

for name in "${OPERATORS[@]}" "${BRIDGES[@]}" "${DEVICES[@]}"; do
    valid_name "$name" || die "'$name' is not a valid identity: letters, digits, . _ - (max 64)"
    [[ $name != server && $name != ca ]] || die "'$name' is reserved"
done
# A device must never get an operator's or bridge's name: the ACL grants by name.
for dev in "${DEVICES[@]}"; do
    for priv in "${OPERATORS[@]}" "${BRIDGES[@]}"; do
        [[ $dev != "$priv" ]] || die "'$dev' is both a device and an operator/bridge"
    done
done

mkdir -p "$OUT"
cd "$OUT"

newkey() { # $1 = key file; created only once, 0600 by the umask
    [[ -s $1 ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 600 "$1"
}

if [[ ! -s ca.crt ]]; then
    newkey ca.key
    openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/O=appliance fleet/CN=appliance fleet CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
    chmod 644 ca.crt
fi

sign() { # $1 = name (file stem), $2 = CN, $3 = extensions text
    local stem=$1 cn=$2 ext=$3
    [[ -s $stem.crt ]] && return 0
    newkey "$stem.key"
    openssl req -new -key "$stem.key" -subj "/O=appliance fleet/CN=$cn" -out "$stem.csr"
    printf '%s\n' "$ext" >"$stem.ext"
    openssl x509 -req -in "$stem.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days "$DAYS" -extfile "$stem.ext" -out "$stem.crt" 2>/dev/null
    rm -f "$stem.csr" "$stem.ext"
    chmod 644 "$stem.crt"
    printf 'mint.sh: %s/%s.crt (CN=%s)\n' "$OUT" "$stem" "$cn" >&2
}

san="subjectAltName=DNS:${SERVERS[0]}"
for host in "${SERVERS[@]:1}"; do san+=",DNS:$host"; done
san+=",IP:127.0.0.1,IP:::1"
sign server "${SERVERS[0]}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
$san"

for name in "${OPERATORS[@]}" "${BRIDGES[@]}" "${DEVICES[@]}"; do
    sign "$name" "$name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
