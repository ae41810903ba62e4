"""Certificates made inside the tests (cryptography): a CA, a server certificate for
127.0.0.1/localhost, and client certificates from that CA and from a stranger's."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key, cert) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool, server: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for ca_name in ("ca", "stranger-ca"):
        ca_key = _key()
        ca_cert = _cert(f"scorewire test {ca_name}", ca_key, _name(f"scorewire test {ca_name}"), ca_key, ca=True)
        out[f"{ca_name}.key"], out[f"{ca_name}.pem"] = _write(directory / ca_name, ca_key, ca_cert)
        leaf = "server" if ca_name == "ca" else None
        if leaf:
            key = _key()
            cert = _cert("localhost", key, ca_cert.subject, ca_key, ca=False, server=True)
            out["server.key"], out["server.pem"] = _write(directory / "server", key, cert)
        client = "client" if ca_name == "ca" else "stranger"
        key = _key()
        cert = _cert(client, key, ca_cert.subject, ca_key, ca=False)
        out[f"{client}.key"], out[f"{client}.pem"] = _write(directory / client, key, cert)
    return out
