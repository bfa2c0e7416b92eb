"""A throwaway TLS certificate for the proxy tests, made at test time (never committed).

Owns one helper: a self-signed certificate for 127.0.0.1 and localhost with its
key, written as HAProxy reads it (chain and key in one PEM) and as a client
trusts it (the certificate alone, as a CA file). It must not start anything.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ProxyCertificate:
    pem_with_key: Path  # HAProxy's `crt`: certificate, then private key
    ca_file: Path  # what clients verify against (the certificate is its own CA)


def make_certificate(directory: Path) -> ProxyCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ringcast test proxy")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pem_with_key = directory / "proxy.pem"
    pem_with_key.write_bytes(cert_pem + key_pem)
    pem_with_key.chmod(0o600)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(cert_pem)
    return ProxyCertificate(pem_with_key, ca_file)
