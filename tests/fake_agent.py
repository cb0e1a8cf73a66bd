"""A small hostile HTTP server for the cases a real Consul agent cannot show.

It listens on a free loopback port, handles each connection in a thread, keeps connections alive,
and answers each request with whatever the test's ``handler`` returns: the bytes of a whole answer,
an iterable of pieces (sent one by one, so a handler can trickle or stream; a :data:`CLOSE` among
them closes the connection there), :data:`RESET` (the connection is reset without an answer) or
:data:`CLOSE` (closed without an answer). :meth:`FakeAgent.silence` never answers. Every request
is recorded, with the number of the connection it came on.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["CLOSE", "RESET", "FakeAgent", "Reply", "Request", "answer", "json_answer", "trickle"]


class _Action:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESET = _Action("RESET")
CLOSE = _Action("CLOSE")

Reply = bytes | Iterable["bytes | _Action"] | _Action


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    #: 1 for the server's first connection, 2 for the next, ...
    connection: int
    #: 1 for the first request on its connection.
    number: int = field(default=1)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


def answer(status: int, body: bytes = b"", content_type: str = "application/json", **headers: str) -> bytes:
    """The bytes of an HTTP/1.1 answer with a Content-Length; ``headers`` use ``_`` for ``-``."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(data: object, status: int = 200, **headers: str) -> bytes:
    return answer(status, json.dumps(data).encode(), **headers)


class FakeAgent:
    """``with FakeAgent(handler) as agent:`` serves on ``agent.address`` until the block ends."""

    def __init__(self, handler: Callable[[Request], Reply], host: str = "127.0.0.1") -> None:
        self.handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.requests: list[Request] = []
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, name="fake-agent", daemon=True)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> FakeAgent:
        self._accepter.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._accepter.join(5)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def silence(self) -> Iterator[bytes]:
        """A reply that never comes (until the server stops)."""
        self._stop.wait(60)
        yield b""

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, number), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, connection: int) -> None:
        reader = sock.makefile("rb")
        count = 0
        try:
            while not self._stop.is_set():
                line = reader.readline(65537)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    header = reader.readline(65537).decode("latin-1").rstrip("\r\n")
                    if not header:
                        break
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                count += 1
                request = Request(method, target, headers, body, connection, count)
                with self._lock:
                    self.requests.append(request)
                reply = self.handler(request)
                if reply is RESET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if reply is CLOSE:
                    return
                assert not isinstance(reply, _Action)
                pieces: Iterable[bytes | _Action] = [reply] if isinstance(reply, bytes) else reply
                for piece in pieces:
                    if self._stop.is_set() or piece is CLOSE:
                        return
                    assert isinstance(piece, bytes)
                    sock.sendall(piece)
        except (OSError, ValueError):
            return  # the client went away
        finally:
            reader.close()
            sock.close()


def trickle(data: bytes, every: float) -> Iterator[bytes]:
    """``data`` a byte at a time, one every ``every`` seconds."""
    for i in range(len(data)):
        time.sleep(every)
        yield data[i : i + 1]
