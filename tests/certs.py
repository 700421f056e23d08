"""Throw-away certificates for the TLS tests, made with ``cryptography``.

``TestPKI(directory)`` writes PEM files for: a CA; server certificates signed
by it (for 127.0.0.1 and localhost, for another name only, an expired one);
a self-signed server certificate; a client certificate signed by the CA.
Keys are EC P-256: quick to make and to use.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestPKI:
    """A CA and the certificates the tests need, as PEM files in ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        self._now = now
        self._ca_key = _key()
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("txfanout test CA")).issuer_name(_name("txfanout test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._ca_key, hashes.SHA256()))
        self.ca = self._write("ca.pem", _cert_pem(self._ca_cert))
        self.server = self.issue("server", ["localhost"], ["127.0.0.1"])
        self.other_name = self.issue("other", ["other.test"], [])
        self.expired = self.issue("expired", ["localhost"], ["127.0.0.1"],
                                  not_before=now - 10 * _DAY, not_after=now - _DAY)
        self.client = self.issue("client", [], [], client=True)
        self.self_signed = self.issue("selfsigned", ["localhost"], ["127.0.0.1"],
                                      self_signed=True)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, dns: list[str], ips: list[str], *, client: bool = False,
              self_signed: bool = False, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None) -> "KeyPair":
        """A certificate for ``dns`` / ``ips`` names; its files are NAME.pem and
        NAME.key (and NAME.both: key and certificate in one file)."""
        key = _key()
        subject = _name(f"txfanout test {name}")
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self._now - _DAY)
            .not_valid_after(not_after or self._now + 30 * _DAY)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False))
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(key if self_signed else self._ca_key, hashes.SHA256())
        cert_pem, key_pem = _cert_pem(cert), _key_pem(key)
        return KeyPair(self._write(f"{name}.pem", cert_pem), self._write(f"{name}.key", key_pem),
                       self._write(f"{name}.both", key_pem + cert_pem))


class KeyPair:
    """Paths of one certificate's PEM files."""

    __test__ = False

    def __init__(self, cert: Path, key: Path, both: Path) -> None:
        self.cert = cert
        self.key = key
        self.both = both
