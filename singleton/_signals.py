"""SIGTERM: hand the keys over before the process ends, as Ctrl-C and a normal exit already do.

Python's default action for SIGTERM (systemd, ``docker stop``, Kubernetes) ends the process at once
without running exit handlers: its keys stay held until the session expires (the TTL, then the
lock-delay; 30-45 s with the defaults), on every deploy. So when :func:`singleton.configure` is called
or an elector starts, in the main thread, while SIGTERM still has its default action and
``handle_sigterm`` is on (the default), singleton installs a handler of its own. On SIGTERM it:

1. puts the default action back, so a second SIGTERM ends the process at once;
2. in a thread of its own, closes every elector of the process: tokens fire, running bodies get
   ``shutdown_grace`` seconds, the keys this process holds are released, the sessions destroyed;
3. sends SIGTERM to the process again, which then ends as it would have ended without singleton.

The main thread runs on meanwhile, so a body running there sees its token fire and can stop; if the
program ends by itself first, the exit hook waits for the hand-over to finish. A handler the
application installed is never replaced (it is checked at each install); one the application installs
later replaces ours, and then a normal exit (``sys.exit`` in it) still releases the keys through the
exit hook. No other signal is touched. ``configure(handle_sigterm=False)`` or
``SINGLETON_HANDLE_SIGTERM=false`` turn all this off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType

from singleton import election as _election

__all__ = ["install", "installed"]

_log = logging.getLogger("singleton")

_lock = threading.Lock()
#: The pid whose relay thread is waiting for the handler's word (a forked child needs its own).
_relay_pid: int | None = None
_pipe: tuple[int, int] | None = None


def installed() -> bool:
    """Whether SIGTERM is handled by singleton in this process now."""
    return signal.getsignal(signal.SIGTERM) is _on_sigterm and _relay_pid == os.getpid()


def install(enabled: bool = True) -> bool:
    """Install the SIGTERM handler if ``enabled``, in the main thread, over the default action only.

    Returns whether singleton handles SIGTERM now. Never raises.
    """
    global _relay_pid, _pipe
    if not enabled or threading.current_thread() is not threading.main_thread():
        return installed()
    with _lock:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm and _relay_pid == os.getpid():
            return True
        if current not in (signal.SIG_DFL, _on_sigterm):  # the application's own: never replaced
            return False
        try:
            read_end, write_end = os.pipe()
            os.set_inheritable(read_end, False)
            os.set_inheritable(write_end, False)
            relay = threading.Thread(target=_relay, args=(read_end,), name="singleton-sigterm", daemon=True)
            relay.start()
            _pipe, _relay_pid = (read_end, write_end), os.getpid()
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (OSError, ValueError, RuntimeError) as exc:
            _log.debug("could not install the SIGTERM handler: %s", exc)
            return False
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """The handler: no lock, no thread start, no I/O but one byte to the relay."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pipe = _pipe
    if pipe is None or _relay_pid != os.getpid():  # a forked child without a relay: die as Python would
        os.kill(os.getpid(), signal.SIGTERM)
        return
    with contextlib.suppress(OSError):
        os.write(pipe[1], b"\0")


def _relay(read_end: int) -> None:
    """Waits for the handler's byte, hands the keys over, then lets SIGTERM end the process."""
    try:
        if not os.read(read_end, 1):
            return
    except OSError:
        return
    _log.info("SIGTERM: releasing the keys of this process before it ends")
    for elector in list(_election._live):
        if elector.pid == os.getpid():
            try:
                elector.close()
            except Exception:  # never keep the process from ending
                _log.exception("closing %r on SIGTERM failed", elector)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    """A forked child keeps our handler (dispositions are inherited) but not the relay thread: start one."""
    global _lock, _relay_pid, _pipe
    _lock = threading.Lock()
    pipe, _pipe, _relay_pid = _pipe, None, None
    if pipe is not None:
        for fd in pipe:
            with contextlib.suppress(OSError):
                os.close(fd)
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        install()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
