"""The device's TLS certificate, served by the HTTPS front (nginx) on the device.

At boot `appliance tls-cert` makes a self-signed one for <hostname> and <hostname>.local
when there is no usable one (and renews its own near its end or for a new hostname); the
page can replace it with the user's own (PUT /api/v1/tls). Both
end up as <dir>/cert.pem and <dir>/key.pem (/data/tls on the device), each written
atomically, the key (0600) first and the certificate last, because the path unit that
reloads nginx watches cert.pem. A power cut between the two renames leaves a pair that
does not match and that nginx would refuse; `ensure` at the next boot replaces such a
pair, so the page stays reachable. The private key is never logged nor returned.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config.load import save_atomic

CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
DEVICE_DIR = Path("/data/tls")  # where the image's nginx reads them (image/README.md)
# Apple's platforms refuse TLS server certificates valid for longer than 825 days, even
# self-signed ones a user chose to trust, and Apple's players are who want the HTTP/2.
VALID_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
# Marks the certificates `make_self_signed` made, so that renewing one (near its end or
# for a new hostname) never replaces a certificate the user uploaded.
OWN_ORG = "Streaming appliance (self-signed)"
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)  # what browsers accept
MAX_PEM = 64 * 1024  # a leaf, a few intermediates and a key fit many times over

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class TlsError(ValueError):
    """A certificate or key that cannot be used; `key` says which ("cert" or "key")."""

    def __init__(self, key: Literal["cert", "key"], message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    issuer: str
    names: list[str]  # subjectAltName: DNS names and IP addresses
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str  # fingerprint, colon-separated hex as browsers show it
    self_signed: bool
    own: bool  # made by make_self_signed

    def public(self) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "names": self.names,
                "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat(), "sha256": self.sha256,
                "self_signed": self.self_signed}


def default_dir(state_dir: Path) -> Path:
    """The device's directory where there is one, so that a config without `web.tls_dir`
    (the defaults a factory reset writes) still replaces what nginx serves; elsewhere
    <state dir>/tls."""
    return DEVICE_DIR if DEVICE_DIR.is_dir() else state_dir / "tls"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def dns_names(hostname: str) -> list[str]:
    """The names a self-made certificate covers: the hostname and its mDNS name."""
    host = hostname.lower().removesuffix(".")
    mdns = host.split(".", 1)[0] + ".local"  # avahi's name: the first label only
    return [host] if host == mdns else [host, mdns]


def make_self_signed(hostname: str, ips: Sequence[IpAddress] = (),
                     now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key and a certificate for `hostname`, <hostname>.local and `ips`,
    as (certificate PEM, key PEM)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    names = dns_names(hostname)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, OWN_ORG)])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A day back: clients whose clocks are a little behind the device's accept it.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def inspect(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = []
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    self_signed = cert.issuer == cert.subject
    return CertInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    names=names, not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc, sha256=fingerprint,
                    self_signed=self_signed,
                    own=self_signed and any(o.value == OWN_ORG for o in orgs))


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True, slots=True)
class Pair:
    chain: list[x509.Certificate]  # the leaf first
    key: PrivateKey
    info: CertInfo  # the leaf's


def load_pair(cert_pem: bytes, key_pem: bytes) -> Pair:
    """The pair, if nginx and browsers can use it; TlsError saying what is wrong otherwise.
    Dates are not checked here (check_dates): a board without a clock may boot with its
    time far behind, and must not take a good certificate for a bad one then."""
    if len(cert_pem) > MAX_PEM or len(key_pem) > MAX_PEM:
        raise TlsError("cert" if len(cert_pem) > MAX_PEM else "key",
                       f"longer than {MAX_PEM // 1024} KiB")
    # cert.pem is readable by anyone: a key pasted with the certificate must not land there.
    if b"PRIVATE KEY-----" in cert_pem:
        raise TlsError("cert", "holds a private key: give the key on its own, as the key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError("cert", "not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError("key", "encrypted with a passphrase, which nginx cannot ask for at "
                              "boot: give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError("key", "not a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise TlsError("key", f"RSA with {key.key_size} bits: at least {MIN_RSA_BITS}")
    elif not (isinstance(key, ec.EllipticCurvePrivateKey)
              and isinstance(key.curve, EC_CURVES)):
        raise TlsError("key", "must be RSA or ECDSA on P-256, P-384 or P-521 (what browsers "
                              "accept)")
    if _spki(chain[0].public_key()) != _spki(key.public_key()):
        raise TlsError("key", "does not match the certificate (the first one given)")
    return Pair(chain, key, inspect(chain[0]))


def check_dates(info: CertInfo, now: dt.datetime | None = None) -> None:
    now = now or _now()
    if now > info.not_after:
        raise TlsError("cert", f"expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    if now < info.not_before:
        raise TlsError("cert", f"not valid before {info.not_before:%Y-%m-%d %H:%M} UTC "
                               "(or the device's clock is wrong)")


def install(directory: Path, pair: Pair) -> None:
    """Put a checked pair in place: the key first, the certificate last (see the top).
    Both are written as parsed, so nothing else that came with them is kept."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = pair.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    save_atomic(directory / KEY_FILE, key_pem.decode("ascii"), 0o600)
    certs = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in pair.chain)
    save_atomic(directory / CERT_FILE, certs.decode("ascii"), 0o644)


def installed(directory: Path) -> CertInfo | None:
    """What the installed certificate says; None when there is none; TlsError if unreadable."""
    try:
        pem = (directory / CERT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return inspect(x509.load_pem_x509_certificates(pem)[0])
    except ValueError:
        raise TlsError("cert", f"{directory / CERT_FILE} is not a PEM certificate") from None


def _keep(directory: Path, hostname: str, now: dt.datetime) -> CertInfo | None:
    """The installed pair's certificate if it should stay as it is."""
    try:
        info = load_pair((directory / CERT_FILE).read_bytes(),
                         (directory / KEY_FILE).read_bytes()).info
    except (OSError, TlsError):
        return None  # missing or half-replaced: nginx would not start with it
    if info.own and (now > info.not_after - RENEW_BEFORE
                     or not set(dns_names(hostname)) <= set(info.names)):
        return None  # ours, and near its end or for another hostname
    return info


def ensure(directory: Path, hostname: str, ips: Sequence[IpAddress] = (), force: bool = False,
           now: dt.datetime | None = None) -> tuple[CertInfo, bool]:
    """A usable pair in `directory`: the one there, or a new self-signed one (also when
    `force`). Returns its certificate's details and whether it is new."""
    now = now or _now()
    if not force and (kept := _keep(directory, hostname, now)) is not None:
        return kept, False
    cert_pem, key_pem = make_self_signed(hostname, ips, now)
    pair = load_pair(cert_pem, key_pem)
    install(directory, pair)
    return pair.info, True
