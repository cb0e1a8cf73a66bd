"""A small HTTP/1.1 client for the Consul agent's API, on the standard library (``http.client``, ``ssl``).

Only :mod:`singleton.backends.consul` uses it. What it guarantees, and why a general-purpose client
did not do:

* **A total deadline per call.** Connect, TLS handshake, sending, the status line, the headers and the
  whole body share one deadline: before every socket operation the socket's timeout is set to the
  time left, so a server that trickles a byte a second is cut off when the deadline passes, not
  after a read timeout per byte. (Resolving a host name is the one step it cannot bound: use an IP
  address where that matters.)
* **A size limit on answers.** A ``Content-Length`` above the limit is refused before the body is
  read; a body without one is read in 64 KiB pieces and refused as soon as it passes the limit. The
  default, 64 MiB, holds a recursive read of tens of thousands of keys.
* **One keep-alive connection per thread**, because the election thread and the watch threads call
  at the same time. A connection found closed by the server before a request is replaced before
  anything is sent; a connection that breaks during a call is retried once on a fresh connection
  only when the caller says the call is idempotent (reads, renew, release, destroy), never for an
  acquire or a session creation. A forked child never uses its parent's connections.
* **The ACL token** travels in the ``X-Consul-Token`` header only: never in a URL, and never in an
  error message (an excerpt of an answer that echoes it has it replaced).

Errors come out as :mod:`singleton.errors` (this is the boundary with ``http.client``, ``ssl`` and
``socket``), each chained with ``from``: :class:`~singleton.errors.BackendUnavailable` for a refused,
reset, timed-out or TLS-failed connection, :class:`~singleton.errors.BackendError` for an answer over
the limit or one that is not HTTP. Interpreting statuses and bodies is the caller's job.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from singleton.config import ConsulSettings
from singleton.errors import BackendError, BackendUnavailable

__all__ = ["MAX_ANSWER_BYTES", "Answer", "HttpClient", "excerpt"]

#: The largest answer accepted by default.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_PIECE = 64 * 1024
_TLS_SETTINGS = (
    "check CONSUL_CACERT (the CA bundle that signed the agent's certificate), "
    "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY (the client certificate, when the agent verifies clients) "
    "and CONSUL_HTTP_SSL_VERIFY"
)
#: Connection errors after which a keep-alive connection is worth one more try on a fresh one.
_BROKEN = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
)
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.)?", re.DOTALL)


@dataclass(frozen=True)
class Answer:
    """A whole HTTP answer: status, headers (names in lower case) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()


def excerpt(data: bytes | str, secret: str | None = None, limit: int = 48) -> str:
    """A short, printable, quoted excerpt of something a server sent, safe for a terminal and a log.

    Escape sequences and control characters are dropped, whitespace collapsed, ``secret`` (the ACL
    token) replaced, and the text cut to ``limit`` characters.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text[: limit * 8]
    if secret:
        text = text.replace(secret, "<hidden>")
    text = _ESCAPES.sub(" ", text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return repr(text)


class _Expired(TimeoutError):
    """The call's deadline passed before a socket operation could start."""


class _TooLarge(Exception):
    def __init__(self, size: int | None) -> None:
        super().__init__(size)
        self.size = size


class _DeadlineSocket:
    """The socket http.client sees: every send and receive gets the time left until the deadline."""

    def __init__(self, sock: socket.socket, owner: _Connection) -> None:
        self.raw = sock
        self._owner = owner
        # As socket.makefile does: the socket is closed once it and every reader made from it are.
        self._readers = 0
        self._closed = False

    def arm(self) -> None:
        left = self._owner.deadline - time.monotonic()
        if left <= 0:
            raise _Expired("timed out")
        self.raw.settimeout(left)

    def sendall(self, data: Any) -> None:
        self.arm()
        self.raw.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_Reader(self), _PIECE)

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and self._readers <= 0:
            self.raw.close()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self._closed = True
        if self._readers <= 0:
            self.raw.close()

    def shutdown(self) -> None:
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or sent something unasked)."""
        if isinstance(self.raw, ssl.SSLSocket) and self.raw.pending():
            return True
        try:
            return _ready(self.raw, select.POLLIN, 0)
        except (OSError, ValueError):
            return True


class _Reader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.arm()
        return self._sock.raw.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


class _Connection(http.client.HTTPConnection):
    """One keep-alive connection; :meth:`connect` honours the deadline of the call in progress."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        super().__init__(host, port)
        self.context = context
        self.deadline = 0.0
        self.pid = os.getpid()
        self.handshaking = False
        self.deadline_sock: _DeadlineSocket | None = None

    def connect(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Expired("timed out")
        raw = socket.create_connection((self.host, self.port), timeout=left)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if self.context is not None:
                sock = self._handshake(raw)
        except BaseException:
            raw.close()
            raise
        self.deadline_sock = _DeadlineSocket(sock, self)
        self.sock = cast(socket.socket, self.deadline_sock)  # http.client only sends, makefiles and closes

    def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        """The TLS handshake, non-blocking, so that a slow server cannot stretch it past the deadline."""
        assert self.context is not None
        self.handshaking = True
        tls = self.context.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        try:
            tls.settimeout(0.0)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    event = select.POLLIN
                except ssl.SSLWantWriteError:
                    event = select.POLLOUT
                left = self.deadline - time.monotonic()
                if left <= 0 or not _ready(tls, event, left):
                    raise _Expired("timed out during the TLS handshake")
        except BaseException:
            tls.close()  # it owns the descriptor now
            raise
        self.handshaking = False
        return tls

    def sock_or_none(self) -> _DeadlineSocket | None:
        """The open socket, or None when the next request opens a new one."""
        return self.deadline_sock if self.sock is not None else None

    def close(self) -> None:
        super().close()
        self.deadline_sock = None


class _Slot:
    """Holds a thread's connection; when the thread ends and its slot is collected, the connection is closed."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection


class HttpClient:
    """Requests to one Consul agent, from any number of threads (one connection each).

    ``description`` names the agent in messages (``consul at http://host:port``).
    """

    def __init__(self, settings: ConsulSettings, description: str, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        if max_answer_bytes < 1024:
            raise ValueError(f"max_answer_bytes must be at least 1024, got {max_answer_bytes!r}")
        self._settings = settings
        self._description = description
        self.max_answer_bytes = max_answer_bytes
        self._local = threading.local()
        # Re-entrant: a thread's slot may be collected, and its connection forgotten, while this
        # thread holds the lock.
        self._lock = threading.RLock()
        self._open: set[_Connection] = set()
        self._context: ssl.SSLContext | None = None
        self._closed = False

    # -- connections -------------------------------------------------------------------------------

    def _tls_context(self, what: str) -> ssl.SSLContext:
        if self._context is None:
            s = self._settings
            step = f"the CA bundle (CONSUL_CACERT={s.ca_cert})" if s.ca_cert else "the system's CA bundle"
            try:
                context = ssl.create_default_context(cafile=s.ca_cert if s.verify else None)
                if not s.verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                if s.client_cert:
                    step = (
                        f"the client certificate (CONSUL_CLIENT_CERT={s.client_cert}, CONSUL_CLIENT_KEY={s.client_key})"
                    )
                    context.load_cert_chain(s.client_cert, s.client_key)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                if isinstance(exc, ssl.SSLError):
                    cause = _tls_cause(exc)
                raise BackendUnavailable(
                    f"TLS to {self._description} cannot be set up {what}: {step} cannot be loaded ({cause})"
                ) from exc
            self._context = context
        return self._context

    def _connection(self, what: str) -> _Connection:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.connection.pid == os.getpid():
            return slot.connection
        context = self._tls_context(what) if self._settings.scheme == "https" else None
        connection = _Connection(self._settings.host, self._settings.port, context)
        slot = _Slot(connection)
        # Not a bound method: the finalizer must not keep this client alive.
        weakref.finalize(slot, _forget, self._open, self._lock, connection)
        with self._lock:
            self._open.add(connection)
        self._local.slot = slot
        return connection

    def _discard(self, connection: _Connection) -> None:
        """Close this thread's connection; its next call opens a fresh one."""
        connection.close()
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.connection is connection:
            del self._local.slot

    def close(self) -> None:
        """Close every connection, waking calls blocked in another thread. The client is not used afterwards."""
        with self._lock:
            self._closed = True
            connections = list(self._open)
            self._open.clear()
        for connection in connections:
            sock = connection.sock_or_none()
            if sock is not None and connection.pid == os.getpid():
                sock.shutdown()
            connection.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections without touching them (they are still the parent's)."""
        with self._lock:
            self._open.clear()
        self._local = threading.local()

    # -- requests ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        timeout: float,
        query: Sequence[tuple[str, str | None]] = (),
        body: bytes | None = None,
        idempotent: bool = False,
    ) -> Answer:
        """Send one request and read the whole answer within ``timeout`` seconds.

        ``what`` says what the call does ("reading key 'a'"), for messages. ``query`` items with a
        None value are sent as bare flags (``?recurse``).

        :raises BackendUnavailable: refused, reset, timed out, or TLS failed
        :raises BackendError: the answer is over the size limit, or is not HTTP
        """
        if self._closed:
            raise BackendUnavailable(f"{self._description}: the backend is closed ({what})")
        target = path
        if query:
            target += "?" + "&".join(k if v is None else f"{k}={urllib.parse.quote(v, safe='')}" for k, v in query)
        headers = {"Accept": "application/json"}
        if self._settings.token:
            headers["X-Consul-Token"] = self._settings.token
        if body is not None:
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + timeout
        tries = 2 if idempotent else 1
        while True:
            if self._closed:
                raise BackendUnavailable(f"{self._description}: the backend is closed ({what})")
            tries -= 1
            connection = self._connection(what)
            sock = connection.sock_or_none()
            reused = sock is not None
            if sock is not None and sock.dropped():
                self._discard(connection)  # closed while idle: nothing was sent on it yet
                connection, reused = self._connection(what), False
            connection.deadline = deadline
            try:
                return self._exchange(connection, method, target, body, headers)
            except _TooLarge as exc:
                self._discard(connection)
                size = f"{exc.size} bytes, over" if exc.size is not None else "more than"
                raise BackendError(
                    f"{self._description} answered {what} with {size} the limit of "
                    f"{self.max_answer_bytes} bytes: refused"
                ) from exc
            except _BROKEN as exc:
                self._discard(connection)
                if reused and tries > 0 and time.monotonic() < deadline:
                    continue  # a keep-alive connection the server dropped meanwhile: once more, fresh
                raise BackendUnavailable(f"{self._description} did not answer {what}: {_cause(exc)}") from exc
            except ssl.SSLError as exc:
                handshaking = connection.handshaking
                self._discard(connection)
                if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) and not handshaking:
                    if reused and tries > 0 and time.monotonic() < deadline:
                        continue
                    raise BackendUnavailable(
                        f"{self._description} did not answer {what}: the connection was closed"
                    ) from exc
                raise BackendUnavailable(
                    f"TLS with {self._description} failed {what}: {_tls_cause(exc)}; {_TLS_SETTINGS}"
                ) from exc
            except TimeoutError as exc:
                self._discard(connection)
                raise BackendUnavailable(
                    f"{self._description} did not answer {what} within {timeout:g}s (timed out)"
                ) from exc
            except http.client.HTTPException as exc:
                self._discard(connection)
                raise BackendError(
                    f"{self._description} does not look like a Consul agent ({what}: not an HTTP answer: "
                    f"{excerpt(str(exc), self._settings.token)})"
                ) from exc
            except OSError as exc:
                self._discard(connection)
                raise BackendUnavailable(f"{self._description} did not answer {what}: {_cause(exc)}") from exc
            except BaseException:
                self._discard(connection)  # half a request: never reuse the connection
                raise

    def _exchange(
        self, connection: _Connection, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> Answer:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        data = self._read_body(response)
        answer = Answer(
            status=response.status,
            reason=response.reason,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=data,
        )
        if response.will_close:
            connection.close()
        return answer

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        length = response.length
        limit = self.max_answer_bytes
        if length is not None:
            if length > limit:
                raise _TooLarge(length)
            return response.read()  # into one buffer of that length
        data = bytearray()
        while True:
            piece = response.read(_PIECE)
            if not piece:
                return bytes(data)
            data += piece
            if len(data) > limit:
                raise _TooLarge(None)


def _ready(sock: socket.socket, event: int, timeout: float) -> bool:
    """Whether ``sock`` is ready for ``event`` (POLLIN, POLLOUT) within ``timeout`` seconds (poll: any fd number)."""
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(timeout * 1000))


def _forget(open_connections: set[_Connection], lock: threading.RLock, connection: _Connection) -> None:
    """A thread ended (its slot was collected): close its connection."""
    with lock:
        open_connections.discard(connection)
    connection.close()


def _cause(exc: BaseException) -> str:
    """A connection error in a few words: "Connection refused", "the connection was reset"."""
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection was closed without an answer"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection was closed in the middle of the answer"
    if isinstance(exc, BrokenPipeError):
        return "the connection was closed while sending"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _tls_cause(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or ""
    if reason == "WRONG_VERSION_NUMBER":
        return "the agent does not speak TLS on this port (is it http, not https?)"
    text = reason.replace("_", " ").lower() if reason else (exc.strerror or type(exc).__name__)
    return text
