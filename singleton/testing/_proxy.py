"""A TCP proxy whose link can be cut or slowed: the network between a process and its Consul agent.

Point the process at :attr:`FaultProxy.address` (``CONSUL_HTTP_ADDR``) instead of the agent, then:

* :meth:`FaultProxy.partition` drops the link both ways, as a network that loses every packet does:
  nothing crosses, nothing is closed or reset. Existing connections freeze (what was in flight stays
  in flight); new connections are accepted (the kernel completes the handshake) and then hang. Each
  side sees only its own timeouts.
* :meth:`FaultProxy.heal` lets everything through again, in order: frozen connections carry on, a
  close that happened during the partition arrives now, hung connections reach the agent.
* :attr:`FaultProxy.latency` delays every chunk by that many seconds in each direction (a request's
  round trip takes twice as long more), keeping the order of each stream.
* :meth:`FaultProxy.reset` ends every open connection with a TCP reset.

When the agent refuses a connection (it is down), the proxy resets the client's connection at once,
which a client sees much as it would see the refusal itself.

One thread runs an asyncio loop for every connection; idle, it sleeps in ``epoll`` and costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

__all__ = ["FaultProxy"]

_CHUNK = 65536


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make the next close of ``writer`` send a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One proxied connection: the client's side and the agent's side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self, reset: bool = True) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset_on_close(writer)
            writer.close()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (``host:port``); see the module docstring.

    Start it with :meth:`start` (or ``with``); :meth:`close` ends every connection and the thread.
    Every method may be called from any thread.
    """

    def __init__(self, upstream: str, *, port: int = 0, name: str = "proxy") -> None:
        host, _, port_text = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port_text))
        self.name = name
        self._port = port
        self._latency = 0.0
        self._partitioned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._open: asyncio.Event | None = None
        self._links: set[_Link] = set()
        #: How many connections were accepted in all.
        self.accepted = 0

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as CONSUL_HTTP_ADDR takes it."""
        return f"127.0.0.1:{self._port}"

    def retarget(self, upstream: str) -> None:
        """Send new connections to another ``host:port`` (existing ones stay where they are)."""
        host, _, port_text = upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port_text))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(128)
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._serve_forever, name=f"fault-proxy[{self.name}]", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(listener), loop).result(10)
        return self

    def close(self) -> None:
        """End every connection (with a reset), stop listening, and stop the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- faults --------------------------------------------------------------------------------

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    def partition(self) -> None:
        """Drop the link both ways: connections freeze, new ones hang; nothing is closed."""
        self._call(self._set_open, False)

    def heal(self) -> None:
        """Let everything through again, in order."""
        self._call(self._set_open, True)

    @contextlib.contextmanager
    def partitioned_for(self) -> Iterator[None]:
        self.partition()
        try:
            yield
        finally:
            self.heal()

    @property
    def latency(self) -> float:
        """Seconds added to every chunk in each direction (0 by default)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"latency must be 0 or more seconds, got {seconds!r}")
        self._latency = float(seconds)

    def reset(self) -> int:
        """End every open connection with a TCP reset; returns how many there were."""
        return self._call(self._reset_all)

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._links)

    # -- the loop's side ------------------------------------------------------------------------

    def _call(self, function: Callable[..., int], *args: object) -> int:
        """Run ``function(*args)`` on the loop's thread and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name} is not started")

        async def run() -> int:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    def _serve_forever(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _listen(self, listener: socket.socket) -> None:
        self._open = asyncio.Event()
        self._set_open(not self._partitioned)
        self._server = await asyncio.start_server(self._handle, sock=listener)

    def _set_open(self, is_open: bool) -> int:
        self._partitioned = not is_open
        assert self._open is not None
        if is_open:
            self._open.set()
        else:
            self._open.clear()
        return 0

    def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            link.abort(reset=True)
        self._links.clear()
        return len(links)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        self._set_open(True)  # wake whatever waits for a heal, so that it sees its link closed
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(client_writer)
        self._links.add(link)
        try:
            await self._forward(link, client_reader)
        except asyncio.CancelledError:
            pass  # closed by close() or reset(): asyncio's stream callback must not see a cancelled task
        finally:
            self._links.discard(link)
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()

    async def _forward(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        assert self._open is not None
        await self._open.wait()  # during a partition a new connection hangs, accepted but never forwarded
        if link not in self._links:  # reset while it hung
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            link.abort(reset=True)  # the agent refused: the client sees a reset at once
            return
        link.upstream = upstream_writer
        if link not in self._links:  # reset while connecting
            link.abort(reset=True)
            return
        done = [False, False]
        link.tasks = [
            asyncio.ensure_future(self._pump(link, client_reader, upstream_writer, done, 0)),
            asyncio.ensure_future(self._pump(link, upstream_reader, link.client, done, 1)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        done: list[bool],
        side: int,
    ) -> None:
        """Copy one direction. Reads stop while partitioned (the sender's buffers fill, as on a dead
        network); every chunk is delivered ``latency`` after it was read, never before an earlier one."""
        assert self._open is not None
        opened: asyncio.Event = self._open
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            try:
                while True:
                    due, chunk = await queue.get()
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await opened.wait()
                    if not chunk:  # the sender closed its side: pass the FIN on
                        if sink.can_write_eof():
                            sink.write_eof()
                        return
                    sink.write(chunk)
                    await sink.drain()
            except (ConnectionError, OSError):
                link.abort(reset=True)

        delivery = asyncio.ensure_future(deliver())
        last_due = 0.0
        try:
            while True:
                await opened.wait()
                chunk = await source.read(_CHUNK)
                last_due = max(loop.time() + self._latency, last_due)
                queue.put_nowait((last_due, chunk))
                if not chunk:
                    break
            await delivery
        except (ConnectionError, OSError):
            delivery.cancel()
            link.abort(reset=True)  # a reset on one side is passed on as a reset to the other
            return
        except asyncio.CancelledError:
            delivery.cancel()
            raise
        done[side] = True
        if all(done):
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()
