"""The TLS the proxy listens with: its certificate and key, and the CAs of client certificates.

`ListenerTls` is what `[server] tls_cert`, `tls_key`, `tls_client_ca` and `tls_client_auth`
say. `ListenerTls.read` checks the files (each problem named by its key, so `check-config` and
a reload report it) and remembers a digest of their bytes, so that a file renewed in place is a
change a reload sees; `context()` builds the server's SSLContext: TLS 1.2 at least, ALPN
"http/1.1", no renegotiation (a connection's client certificate never changes, so its identity
may be kept per connection).

`ServingContext` is how a renewed certificate reaches new connections without dropping the
established ones. A listener is started once with one SSLContext; its SNI callback runs
during every handshake (with or without a server name) and points the new connection at the
context in use now (`SSLObject.context`, i.e. OpenSSL's SSL_set_SSL_CTX), which carries the
certificate, the key and the client-CA store. Connections that finished their handshake keep
what they were given. The verify mode (required or optional client certificates) is fixed
when the connection is made, by the listening context: changing it needs a restart.

Reading the files is the only I/O here; nothing of asyncio or sockets.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CLIENT_AUTH_MODES: Final = ("required", "optional")
ALPN_PROTOCOLS: Final = ("http/1.1",)


@dataclass(frozen=True)
class ListenerTls:
    """The listener's certificate (chain), its key (None: in the certificate's file), and the
    bundle of CAs whose client certificates are asked for (None: none are)."""

    cert: Path
    key: Path | None = None
    client_ca: Path | None = None
    client_auth: str = "required"  # or "optional": a client may connect without a certificate
    # (key, SHA-256 of the file's bytes) when they were read: a renewed file is a change.
    contents: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def read(cls, cert: Path, key: Path | None = None, client_ca: Path | None = None,
             client_auth: str = "required") -> ListenerTls:
        """The settings with every file checked; ValueError("key: why") for the first file
        that cannot be used, `key` being tls_cert, tls_key or tls_client_ca."""
        tls = cls(cert, key, client_ca, client_auth)
        tls.context()
        contents = tuple((name, hashlib.sha256(_read(name, path)).hexdigest())
                         for name, path in tls.files())
        return cls(cert, key, client_ca, client_auth, contents)

    def changed(self, other: ListenerTls) -> tuple[str, ...]:
        """The keys whose setting or file differs in `other`, in the file's order."""
        mine, theirs = dict(self.files()), dict(other.files())
        read, read_other = dict(self.contents), dict(other.contents)
        keys = [name for name in ("tls_cert", "tls_key", "tls_client_ca")
                if mine.get(name) != theirs.get(name) or read.get(name) != read_other.get(name)]
        if self.client_auth != other.client_auth:
            keys.append("tls_client_auth")
        return tuple(keys)

    def files(self) -> tuple[tuple[str, Path], ...]:
        """The files, each with the key that names it."""
        named = (("tls_cert", self.cert), ("tls_key", self.key), ("tls_client_ca", self.client_ca))
        return tuple((name, path) for name, path in named if path is not None)

    def context(self, *, client_certificates: bool = True) -> ssl.SSLContext:
        """A new server context; `client_certificates=False` leaves out the client CAs (the
        ops listener's: probes present none). ValueError as in `read`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_RENEGOTIATION
        context.set_alpn_protocols(ALPN_PROTOCOLS)
        self._load_pair(context)
        if client_certificates and self.client_ca is not None:
            bundle = _read("tls_client_ca", self.client_ca)
            _certificates("tls_client_ca", self.client_ca, bundle)
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"tls_client_ca: cannot use {self.client_ca} ({_why(exc)})"
                                 ) from None
            optional = self.client_auth == "optional"
            context.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
        return context

    def _load_pair(self, context: ssl.SSLContext) -> None:
        _certificates("tls_cert", self.cert, _read("tls_cert", self.cert))
        key_name, key_path = ("tls_cert", self.cert) if self.key is None else ("tls_key",
                                                                               self.key)
        _private_key(key_name, key_path, _read(key_name, key_path))
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"{key_name}: {key_path} is not the key of the certificate "
                                 f"in {self.cert}") from None
            raise ValueError(f"tls_cert: cannot use {self.cert} with its key ({_why(exc)})"
                             ) from None
        except OSError as exc:
            raise ValueError(f"tls_cert: cannot use {self.cert} ({_why(exc)})") from None


class ServingContext:
    """The SSLContext a listener is started with (`listening`), whose certificate `use`
    replaces for the handshakes that start from then on."""

    def __init__(self, listening: ssl.SSLContext) -> None:
        self.listening = listening
        self._current = listening
        listening.sni_callback = self._pick

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def use(self, context: ssl.SSLContext) -> None:
        self._current = context

    def _pick(self, connection: ssl.SSLObject, _server_name: str | None,
              context: ssl.SSLContext) -> None:
        current = self._current
        if current is not context:
            connection.context = current


class ListenerCertificates:
    """The serving contexts of the proxy's listener and (with `ops`) of the ops listener,
    which shares the certificate but asks for no client certificate."""

    def __init__(self, tls: ListenerTls, *, ops: bool = False) -> None:
        self.tls = tls
        self.proxy = ServingContext(tls.context())
        self.ops = ServingContext(tls.context(client_certificates=False)) if ops else None

    def prepare(self, tls: ListenerTls) -> Callable[[], None]:
        """The contexts of `tls`, built now (ValueError as in `ListenerTls.read`, and nothing
        changes); the function returned puts them in use, in one step."""
        proxy = tls.context()
        ops = tls.context(client_certificates=False) if self.ops is not None else None

        def switch() -> None:
            self.tls = tls
            self.proxy.use(proxy)
            if self.ops is not None and ops is not None:
                self.ops.use(ops)

        return switch


def _read(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path} ({_why(exc)})") from None


def _certificates(name: str, path: Path, data: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{name}: {path} holds no PEM certificate") from None


def _private_key(name: str, path: Path, data: bytes) -> None:
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # it is encrypted
        raise ValueError(f"{name}: the key in {path} is encrypted; the proxy needs it "
                         "unencrypted (protect the file instead)") from None
    except ValueError:
        raise ValueError(f"{name}: {path} holds no PEM private key") from None


def _no_passphrase() -> bytes:
    """Never prompt on a terminal for a passphrase (the key was checked to need none)."""
    return b""


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "not valid PEM"
    return exc.strerror or type(exc).__name__
