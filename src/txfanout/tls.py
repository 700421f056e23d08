"""TLS to partners: verified by default, configured per partner.

A :class:`PartnerTLS` is built once per ``https`` partner when the config is
loaded: it reads and checks the partner's PEM files (``ca_file``,
``client_cert``, ``client_key``) and makes one OpenSSL context; each new
connection then only costs an ``SSL.Connection``. It verifies the chain
(against ``ca_file`` or the system roots) and the host name (service-identity)
and records *why* a certificate was refused, so that the call's ``error`` can
say so (:func:`describe`).

:class:`HandshakeEndpoint` makes a connection count as connected only once its
handshake is done: a handshake that fails is a connect failure with its own
reason, and one still running when the call's timeout comes is
:class:`HandshakeCancelled`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, cast

import idna
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, ServiceID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import serverFromString, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._twisted import HTTP11ClientProtocol

log = Logger()

TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
MAX_PEM_BYTES = 1024 * 1024

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) -> what the call's error says.
_NOT_TRUSTED = "TLS: certificate not trusted"
_VERIFY_ERRORS = {
    2: _NOT_TRUSTED,    # unable to get issuer certificate
    9: "TLS: certificate not yet valid",
    10: "TLS: certificate expired",
    18: _NOT_TRUSTED,   # self-signed leaf
    19: _NOT_TRUSTED,   # self-signed certificate in chain
    20: _NOT_TRUSTED,   # unable to get local issuer certificate
    21: _NOT_TRUSTED,   # unable to verify the first certificate
    23: "TLS: certificate revoked",
    24: _NOT_TRUSTED,   # invalid CA certificate
    27: _NOT_TRUSTED,   # certificate not trusted
}
# Substrings of OpenSSL errors seen during a handshake -> the call's error.
_SSL_ERRORS = (
    ("certificate required", "TLS: partner requires a client certificate"),
    ("alert bad certificate", "TLS: partner refused the client certificate"),
    ("alert unknown ca", "TLS: partner refused the client certificate"),
    ("alert certificate unknown", "TLS: partner refused the client certificate"),
    ("alert certificate expired", "TLS: partner refused the client certificate"),
    ("alert protocol version", "TLS: no protocol version in common"),
    ("unsupported protocol", "TLS: no protocol version in common"),
    ("wrong version number", "TLS: partner does not speak TLS"),
    ("packet length too long", "TLS: partner does not speak TLS"),
    ("certificate verify failed", "TLS: certificate verification failed"),
)


class TLSSettingError(Exception):
    """A partner's TLS setting ``key`` was refused for ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class CertificateRejected(Exception):
    """OpenSSL refused the partner's certificate chain with X509_V_ERR ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class HandshakeCancelled(CancelledError):
    """The call ended (timeout or cancel) while the TLS handshake was running."""


class HandshakeInterrupted(Exception):
    """The connection closed before the TLS handshake was done."""


def describe(exc: BaseException | None) -> str | None:
    """The call's ``error`` text for a TLS failure, or None when ``exc`` is
    not one. Fixed texts only: nothing from the peer reaches clients."""
    if isinstance(exc, CertificateRejected):
        return _VERIFY_ERRORS.get(exc.code, "TLS: certificate rejected")
    if isinstance(exc, VerificationError):
        return "TLS: host name mismatch"
    if isinstance(exc, HandshakeInterrupted):
        return "TLS: connection closed during the handshake"
    if isinstance(exc, SSL.Error):
        text = str(exc.args).lower()
        for fragment, description in _SSL_ERRORS:
            if fragment in text:
                return description
        return "TLS: handshake failed"
    return None


def server_endpoint_problem(description: str) -> str:
    """Why the ``ssl:`` server endpoint string ``description`` cannot be
    used (its key and certificate files are read as Twisted will), or ''."""
    try:
        serverFromString(None, description)
    except OSError as e:
        return f"cannot read {e.filename} ({e.strerror or e})"
    except Exception as e:  # whatever Twisted's parser raises: say it, do not crash
        return f"is not a usable TLS endpoint ({e})"
    return ""


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise TLSSettingError(key, f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > MAX_PEM_BYTES:
        raise TLSSettingError(key, f"{path} is larger than {MAX_PEM_BYTES} bytes")
    return data


def _certificates(path: str, key: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSSettingError(key, f"{path} is not a PEM certificate file") from None
    return data, certs


def _private_key(path: str, key: str) -> tuple[bytes, Any]:
    data = _read(path, key)
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSSettingError(key, f"{path} is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSSettingError(key, f"{path} is not a PEM private key") from None
    return data, private


@implementer(IOpenSSLClientConnectionCreator)
class PartnerTLS:
    """How to open TLS connections to one partner host (a connection creator).

    ``key`` is a digest of everything that shapes a connection (host, settings,
    file contents): partners with equal keys may share pooled connections,
    others never do, and a reload that changes nothing keeps its connections.
    Raises :class:`TLSSettingError` naming the setting at fault.
    """

    def __init__(self, host: str, *, ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 min_version: str | None = None, verify: bool = True) -> None:
        if isIPAddress(host) or isIPv6Address(host):
            self._server_name: bytes | None = None
            self._service_id: ServiceID = IPAddress_ID(host)
        else:
            try:
                self._server_name = idna.encode(host, uts46=True)
            except idna.IDNAError:
                raise TLSSettingError("url", "host is not a valid DNS name for TLS") from None
            self._service_id = DNS_ID(self._server_name.decode("ascii"))
        digest = hashlib.sha256(f"{host}\0{min_version}\0{verify}".encode())
        options = CertificateOptions(raiseMinimumTo=TLS_VERSIONS[min_version]) \
            if min_version is not None else CertificateOptions()
        context = options.getContext()  # protocol versions, ciphers: Twisted's defaults
        if ca_file is not None:
            data, roots = _certificates(ca_file, "ca_file")
            digest.update(b"\0ca\0" + data)
            store = context.get_cert_store()
            assert store is not None  # a context always has one
            for root in roots:
                store.add_cert(X509.from_cryptography(root))
        elif verify:
            context.set_default_verify_paths()  # the system roots
        if client_cert is not None and client_key is not None:
            cert_data, chain = _certificates(client_cert, "client_cert")
            key_data, private = _private_key(client_key, "client_key")
            digest.update(b"\0cert\0" + cert_data + b"\0key\0" + key_data)
            try:
                context.use_certificate(chain[0])
                context.use_privatekey(private)
                context.check_privatekey()
            except SSL.Error:
                raise TLSSettingError("client_key",
                                      f"{client_key} does not match client_cert") from None
            for extra in chain[1:]:
                context.add_extra_chain_cert(extra)
        self._context = context
        self.host = host
        self.verify = verify
        self.key = digest.digest()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A new connection: SNI from the host name, our verification."""
        connection = SSL.Connection(self._context, None)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        if self.verify:
            connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                                  _verifier(tlsProtocol, self._service_id))
        return connection

    def __repr__(self) -> str:
        return f"<PartnerTLS {self.host} verify={self.verify}>"

    def __copy__(self) -> "PartnerTLS":
        return self  # immutable once built; holds an OpenSSL context

    def __deepcopy__(self, memo: dict[int, Any]) -> "PartnerTLS":
        return self


def _verifier(tls_protocol: Any, service_id: ServiceID) -> Any:
    """OpenSSL's verify callback for one connection: the chain as OpenSSL
    judged it, then the leaf against the host name. A refusal fails the
    connection with a reason :func:`describe` knows."""
    protocol = [tls_protocol]  # dropped after the verdict: no cycle remains

    def fail(reason: Failure) -> bool:
        if protocol:
            protocol.pop().failVerification(reason)
        return False

    def verify(connection: SSL.Connection, cert: X509, code: int, depth: int,
               ok: int) -> bool:
        try:
            if not ok:
                return fail(Failure(CertificateRejected(code)))
            if depth == 0:
                try:
                    verify_service_identity(extract_patterns(cert), [service_id], [])
                except VerificationError:
                    return fail(Failure())
                protocol.clear()
            return True
        except BaseException:
            log.failure("while verifying a partner certificate")
            return fail(Failure())

    return verify


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """TLS over ``endpoint`` with ``creator``; ``connect`` fires once the
    handshake is done (the protocol must be a :class:`HandshakeAwareProtocol`)."""

    def __init__(self, creator: PartnerTLS, endpoint: Any) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        d = wrapClientTLS(self._creator, self._endpoint).connect(protocolFactory)
        return d.addCallback(_handshake_done)


def _handshake_done(protocol: IProtocol) -> Deferred[Any]:
    return cast(HandshakeAwareProtocol, protocol).when_handshake_done()


@implementer(IHandshakeListener)
class HandshakeAwareProtocol(HTTP11ClientProtocol):
    """The pool's HTTP/1.1 protocol, which can tell when its TLS handshake is
    done (plain connections never ask)."""

    transport: Any  # TCP: abortConnection
    _handshake: Deferred[Any] | None = None
    _handshake_done = False

    def when_handshake_done(self) -> Deferred[Any]:
        """Fires with this protocol after the handshake; fails with its
        reason; cancelling it aborts the connection (HandshakeCancelled)."""
        if self._handshake_done:
            return succeed(self)
        self._handshake = Deferred(self._cancel_handshake)
        return self._handshake

    def _cancel_handshake(self, d: Deferred[Any]) -> None:
        self._handshake = None
        d.errback(HandshakeCancelled())
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        d, self._handshake = self._handshake, None
        if d is not None:
            d.callback(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        d, self._handshake = self._handshake, None
        if d is not None:
            d.errback(reason if describe(reason.value) is not None
                      else Failure(HandshakeInterrupted()))
        super().connectionLost(reason)


def warn_unverified(partners: Mapping[str, Any]) -> None:
    """Log a warning for each partner whose certificate is not verified
    (``tls_verify = false``); called whenever a config goes live."""
    for name, partner in partners.items():
        if partner.tls is not None and not partner.tls.verify:
            log.warn("partners.{partner}: tls_verify = false: calls to {host} do NOT verify "
                     "its certificate; anyone on the path can impersonate it",
                     partner=name, host=partner.tls.host)
