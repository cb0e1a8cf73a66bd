"""The ``singleton`` command line (also ``python -m singleton``), in the manner of ``consul lock``.

::

    singleton run --key reports/nightly -- ./nightly-report --full
    singleton run --key reports/nightly --no-wait -- ./nightly-report   # exit 75 when held elsewhere
    singleton status reports/nightly                                    # exit 0 held, 1 free
    singleton status --json

Consul is reached through the Consul CLI's environment variables (``CONSUL_HTTP_ADDR``,
``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_CACERT``, ...) read by
:meth:`Settings.from_env <singleton.config.Settings.from_env>`; ``--address``, ``--token`` and
``--token-file`` override them. Keys are relative to ``SINGLETON_KEY_PREFIX`` (or ``--key-prefix``).

``singleton run``
-----------------
1. Campaigns for the key on the election engine: one session (``--ttl``, ``--lock-delay``) whose name
   and key value are ``hostname:pid`` of this ``singleton`` process.
2. The first acquisition attempt decides whether Consul can be used at all: an unreachable agent or an
   ACL denial ends the run with exit 69 and one line saying why; the command is not started.
3. Waits for the lock: for ever by default, up to ``--wait S``, or not at all with ``--no-wait``
   (exit 75 as soon as another process is seen holding the key; a key that is free but still inside a
   lock-delay is waited for, at most the lock-delay).
4. Starts the command in a session of its own (``setsid``), so that signals reach every process of it
   and none outlives a lost lock, with ``SINGLETON_LOCK_KEY``, ``SINGLETON_LOCK_FENCE`` (the fencing
   index of this term) and ``SINGLETON_LOCK_SESSION`` in its environment.
5. Forwards SIGINT, SIGTERM and SIGHUP to the command's process group, and keeps waiting for it.
   SIGTSTP (^Z) stops the command (SIGSTOP: its group is orphaned, a SIGTSTP would be discarded) and
   then this process; SIGCONT resumes both. A lease that ran out meanwhile means SIGKILL on resumption.
6. When the lock is lost (the stop token fires) it sends SIGTERM to the group, then SIGKILL at the
   *kill deadline*: :data:`KILL_SAFETY` seconds before the earliest moment another process could hold
   the key, and never more than ``--kill-grace`` seconds after the SIGTERM:

   * the local lease ran out (no renewal reached Consul): Consul cannot expire the session before
     ``margin`` seconds after the lease ended, and the key then stays locked for ``lock_delay``
     seconds, so the deadline is ``lease end + margin + lock_delay - KILL_SAFETY``;
   * the key was released by Consul (the session was invalidated): nobody can take it for
     ``lock_delay`` seconds from then; the session is looked up at once, and if it still exists (the key
     was released explicitly, with no lock-delay) SIGKILL follows immediately;
   * the key was deleted or taken by another session, a renewal found the session gone (when it went
     is unknown), or anything else: another process may hold the key already, so SIGKILL at once.

   The run then ends with exit 76 once the command has exited.
7. When the command exits the key is released and the session destroyed (release first: a follower
   takes over at once, without lock-delay), and ``singleton`` exits with the command's code
   (``128 + N`` when it was killed by signal N).

If ``singleton`` itself is killed with SIGKILL it cannot stop the command: the command then runs
on while the session expires. Processes the command leaves behind in other sessions are not tracked.

Exit codes
----------
=====  =====================================================================================
0..    ``run``: the command's own exit code (128 + N when signal N killed it)
0      ``status``: every key named is held (without keys: at least one key is held)
1      ``status``: a key named is free (without keys: none is held)
64     bad arguments or settings (EX_USAGE)
69     Consul unreachable, or an ACL denied a call (EX_UNAVAILABLE)
75     ``run --no-wait`` / ``--wait S``: another process holds the key (EX_TEMPFAIL)
76     ``run``: the lock was lost while the command ran; it was stopped
126    ``run``: the command could not be executed (permission denied, not executable)
127    ``run``: the command was not found
128+N  ``run``: signal N arrived while waiting for the lock; the command was not started
=====  =====================================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from singleton._version import __version__
from singleton.backends import KeyInfo, SessionInfo, create_backend
from singleton.config import LOCK_DELAY_MAX, LeaseSpec, Settings, check_range, parse_address
from singleton.election import Election, ElectionStatus, Elector
from singleton.errors import AccessDenied, BackendError, BackendUnavailable, ConfigurationError, SingletonError
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_LEADERSHIP_LOST, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from singleton.token import StopCause, StopToken

__all__ = ["EXIT_CANNOT_EXECUTE", "EXIT_FREE", "EXIT_NOT_FOUND", "KILL_SAFETY", "kill_deadline", "main"]

#: ``status``: a key named is free (or, without keys, no key is held).
EXIT_FREE = 1
#: ``run``: the command exists but could not be executed (as a shell does).
EXIT_CANNOT_EXECUTE = 126
#: ``run``: the command was not found (as a shell does).
EXIT_NOT_FOUND = 127

#: SIGKILL goes out this many seconds before the earliest takeover: room for this process's own
#: scheduling delay on a busy host and for the round trip in which the loss was seen.
KILL_SAFETY = 0.5
#: Default upper bound of the SIGTERM-to-SIGKILL grace (``--kill-grace``).
DEFAULT_KILL_GRACE = 10.0

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Caught too: ^Z stops the command with this process, which a session of its own would not.
_SUSPEND = signal.SIGTSTP
_LOCK_ENV = ("SINGLETON_LOCK_KEY", "SINGLETON_LOCK_FENCE", "SINGLETON_LOCK_SESSION")
_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01: flags below this are not an acquisition time

_EXIT_CODES = """\
exit codes:
  0..    run: the command's own exit code (128+N when signal N killed it)
  0      status: every key named is held (without keys: at least one is held)
  1      status: a key named is free (without keys: none is held)
  64     bad arguments or settings
  69     Consul unreachable, or an ACL denied a call
  75     run --no-wait / --wait S: another process holds the key
  76     run: the lock was lost while the command ran; it was stopped
  126    run: the command could not be executed
  127    run: the command was not found
  128+N  run: signal N arrived while waiting for the lock (the command was not started)
"""

_ENVIRONMENT = """\
environment:
  CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT,
  CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_SSL_VERIFY   as for the consul CLI
  SINGLETON_KEY_PREFIX, SINGLETON_TTL, SINGLETON_LOCK_DELAY, SINGLETON_MARGIN   our own defaults
"""

_RUN_DESCRIPTION = """\
Run COMMAND only while this process holds the Consul lock KEY, like `consul lock`.

Waits for the lock (for ever unless --wait or --no-wait), then starts COMMAND in a session of its
own with SINGLETON_LOCK_KEY, SINGLETON_LOCK_FENCE and SINGLETON_LOCK_SESSION in its environment.
SIGINT, SIGTERM and SIGHUP are forwarded to it; ^Z stops it along with singleton. If the lock is
lost, COMMAND gets SIGTERM, then SIGKILL before any other process could take the lock (at once
when one may hold it already), and singleton exits 76. When COMMAND exits, the lock is released
and singleton exits with its code. The key's value, and the session's name, is hostname:pid of
this singleton process.
"""


# -- errors and messages --------------------------------------------------------------------------


class _Exit(Exception):
    """Ends the command with ``code`` after printing ``message`` (one line) on stderr.

    An ``error`` is always printed, as ``<prog>: error: <message>``; otherwise the message is an
    outcome (``<prog>: <message>``) that ``-q`` silences.
    """

    def __init__(self, code: int, message: str | None = None, *, error: bool = True, prog: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error
        self.prog = prog


class _Output:
    """Where messages go: one line each on stderr, prefixed with the program name."""

    def __init__(self, prog: str, verbosity: int, stream: TextIO | None = None) -> None:
        self.prog = prog
        self.verbosity = verbosity
        self.stream = stream if stream is not None else sys.stderr

    def note(self, message: str) -> None:
        """What a user running the command by hand wants to know (silenced by ``-q``)."""
        if self.verbosity >= 0:
            self._write(message)

    def detail(self, message: str) -> None:
        """Shown with ``-v`` only."""
        if self.verbosity > 0:
            self._write(message)

    def _write(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"{self.prog}: {' '.join(message.split())}", file=self.stream, flush=True)


class _Gate(logging.Filter):
    """Holds back the engine's log records until opened (its first failures are reported as one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.open


@contextlib.contextmanager
def _engine_logging(out: _Output) -> Iterator[_Gate]:
    """Route the ``singleton`` loggers to stderr for the duration of a command, behind a gate."""
    gate = _Gate()
    handler = logging.StreamHandler(out.stream)
    handler.setFormatter(logging.Formatter(f"{out.prog}: %(message)s"))
    handler.addFilter(gate)
    level = logging.INFO if out.verbosity > 0 else logging.ERROR if out.verbosity < 0 else logging.WARNING
    handler.setLevel(level)
    logger = logging.getLogger("singleton")
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield gate
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


# -- argument parsing -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits with EXIT_USAGE (64), not 2."""

    def error(self, message: str) -> NoReturn:
        raise _Exit(EXIT_USAGE, f"{message} (see '{self.prog} --help')", prog=self.prog)


# argparse turns a ValueError of a type function into "invalid value"; _Exit passes through it with
# the settings layer's own message, which names the option and the allowed range.


def _seconds(name: str, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return check_range(name, text, low, high)
        except ConfigurationError as exc:
            raise _Exit(EXIT_USAGE, str(exc)) from None

    return parse


def _address(text: str) -> str:
    try:
        parse_address(text, "--address")
    except ConfigurationError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``singleton`` argument parser (exposed for documentation tools and tests)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="singleton",
        description="Run a command on exactly one process of a fleet: the holder of a Consul lock.",
        epilog=_EXIT_CODES + "\n" + _ENVIRONMENT,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"singleton {__version__}")

    common = _Parser(add_help=False)
    consul = common.add_argument_group("Consul")
    consul.add_argument(
        "--address",
        type=_address,
        metavar="HOST:PORT",
        help="the agent's HTTP API: host:port or http(s)://host:port (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)",
    )
    consul.add_argument(
        "--token", metavar="TOKEN", help="ACL token (default: CONSUL_HTTP_TOKEN; visible to `ps`: prefer --token-file)"
    )
    consul.add_argument(
        "--token-file", metavar="FILE", help="file holding the ACL token (default: CONSUL_HTTP_TOKEN_FILE)"
    )
    consul.add_argument(
        "--timeout",
        type=_seconds("--timeout", 0.1, 300),
        metavar="SECONDS",
        help="HTTP timeout of each call to Consul; blocking queries add their wait (default: 5)",
    )
    consul.add_argument(
        "--key-prefix", metavar="PREFIX", help="prefix of every key, as in 'myapp/' (default: SINGLETON_KEY_PREFIX)"
    )
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="say what happens (acquired, released, retries)")
    talk.add_argument("-q", "--quiet", action="store_true", help="print errors only")

    sub = parser.add_subparsers(dest="subcommand", metavar="{run,status}", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a command while holding a lock",
        description=_RUN_DESCRIPTION,
        epilog=_EXIT_CODES + "\n" + _ENVIRONMENT,
        formatter_class=formatter,
        usage="%(prog)s --key KEY [options] -- COMMAND [ARGS...]",
    )
    lock = run.add_argument_group("lock")
    lock.add_argument("--key", required=True, help="the Consul key to lock, as in 'reports/nightly'")
    lock.add_argument(
        "--ttl",
        type=_seconds("--ttl", 10, 86400),
        metavar="SECONDS",
        help="session TTL, 10 to 86400 (default: SINGLETON_TTL, else 15); renewed every TTL/3",
    )
    lock.add_argument(
        "--lock-delay",
        type=_seconds("--lock-delay", 0, LOCK_DELAY_MAX),
        metavar="SECONDS",
        help="after this process's session is invalidated nobody can take the key for this long; "
        "0 to 60 (default: SINGLETON_LOCK_DELAY, else 15)",
    )
    waiting = lock.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        type=_seconds("--wait", 0, 366 * 86400),
        metavar="SECONDS",
        help="give up with exit 75 when the lock is not acquired within SECONDS (default: wait for ever)",
    )
    waiting.add_argument(
        "--no-wait",
        action="store_true",
        help="exit 75 at once when another process holds the key (Go's exitOnLockFound)",
    )
    lock.add_argument(
        "--kill-grace",
        type=_seconds("--kill-grace", 0, 3600),
        default=DEFAULT_KILL_GRACE,
        metavar="SECONDS",
        help="when the lock is lost: at most this long from SIGTERM to SIGKILL, and always shorter than "
        f"the time before another process could take the lock (default: {DEFAULT_KILL_GRACE:g})",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="what to run")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="who holds which key",
        description="Show who holds each KEY (hostname:pid), since when, the session and the fencing index.\n"
        "Without KEY, every held key under the key prefix. Exit 0 when every KEY is held, 1 when one is free.",
        epilog=_EXIT_CODES + "\n" + _ENVIRONMENT,
        formatter_class=formatter,
    )
    status.add_argument("keys", nargs="*", metavar="KEY", help="keys to show (default: every held key)")
    status.add_argument("--json", action="store_true", help="print a JSON list of objects, one per key")
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings.from_env with the command line's overrides (the options win over the environment)."""
    overrides: dict[str, Any] = {
        "address": args.address,
        "key_prefix": args.key_prefix,
        "timeout": args.timeout,
        **extra,
    }
    if args.token is not None:
        overrides["token"] = args.token.strip() or None
    elif args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                overrides["token"] = handle.read().strip() or None
        except OSError as exc:
            raise ConfigurationError(f"--token-file {args.token_file} cannot be read: {exc.strerror or exc}") from None
    return Settings.from_env(**{name: value for name, value in overrides.items() if value is not None})


def _unavailable(exc: BaseException) -> _Exit:
    """Exit 69 with one line that says what to fix."""
    if isinstance(exc, AccessDenied):
        return _Exit(EXIT_UNAVAILABLE, f"{exc}; set CONSUL_HTTP_TOKEN (or --token-file) to a token with that rule")
    if isinstance(exc, BackendUnavailable):
        return _Exit(EXIT_UNAVAILABLE, f"cannot reach Consul: {exc}; check CONSUL_HTTP_ADDR (or --address)")
    return _Exit(EXIT_UNAVAILABLE, f"Consul failed: {exc}")


def _failing(status: ElectionStatus) -> str | None:
    """Why the latest session or acquisition attempt failed (the engine's words), or None when it did not."""
    if status.is_leader or status.error is None:
        return None
    return status.reason or str(status.error)


def _attempt_failed(key: str, why: str) -> _Exit:
    """Exit 69 for a failed attempt, as the engine worded it (an ACL denial names the rule needed)."""
    hint = "set CONSUL_HTTP_TOKEN (or --token-file)" if "ACL" in why else "check CONSUL_HTTP_ADDR (or --address)"
    return _Exit(EXIT_UNAVAILABLE, f"cannot acquire {key!r}: {why}; {hint}")


# -- waking the main thread -------------------------------------------------------------------------


class _Waker:
    """A self-pipe: signals (through ``signal.set_wakeup_fd``) and other threads wake the main loop.

    A signal handler must not touch a lock (the main thread may hold it), so waiting on a
    ``threading.Event`` could miss a signal; a pipe cannot.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    @property
    def fd(self) -> int:
        return self._write

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already awake) or closed (shutting down)
            os.write(self._write, b"\0")

    def wait(self, timeout: float | None) -> None:
        """Return when woken, or after ``timeout`` seconds; drains every pending wake-up."""
        timeout = None if timeout is None else max(0.0, timeout)
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self._read], [], [], timeout)
            if not readable:
                return
        with contextlib.suppress(OSError):
            while os.read(self._read, 512):
                pass

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def _signals_to(waker: _Waker, pending: list[int]) -> Iterator[None]:
    """Catch SIGINT, SIGTERM, SIGHUP and SIGTSTP: each is appended to ``pending`` and wakes the main loop."""

    def handler(signum: int, frame: object) -> None:
        pending.append(signum)

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    previous_fd = signal.set_wakeup_fd(waker.fd, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, handler) for signum in (*_FORWARDED, _SUSPEND)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        signal.set_wakeup_fd(previous_fd)


# -- the kill deadline ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    """When the command must be dead after the lock was lost, and why then."""

    #: Monotonic time of the SIGKILL (SIGTERM goes out at once unless this is already due).
    kill_at: float
    why: str
    #: The key was released by Consul: whether the session still exists decides between at once
    #: (an explicit release: no lock-delay) and the lock-delay.
    check_session: bool = False


def kill_deadline(
    cause: StopCause | None, spec: LeaseSpec, fired_at: float, lease_end: float | None, grace: float
) -> KillPlan:
    """The SIGKILL deadline after the stop token fired at ``fired_at`` because of ``cause`` (monotonic times).

    ``lease_end`` is the token's lease deadline (:attr:`StopToken.lease_deadline`). The deadline is
    :data:`KILL_SAFETY` before the earliest moment another process could hold the key, and at most
    ``grace`` seconds after ``fired_at``. A cause that says nothing of that moment (the key deleted or
    taken, the session found gone at an unknown time) means another process may hold the key already.
    """
    assert spec.margin is not None
    if cause is StopCause.KEY_RELEASED:
        takeover = fired_at + spec.lock_delay
        why = f"the session was invalidated: nobody can take the key for its {spec.lock_delay:g}s lock-delay"
        check = True
    elif cause is StopCause.LEASE_EXPIRED and lease_end is not None:
        takeover = min(lease_end, fired_at) + spec.margin + spec.lock_delay
        why = (
            f"Consul cannot expire the session before {spec.margin:g}s after the local lease ended, "
            f"and the key stays locked {spec.lock_delay:g}s more"
        )
        check = False
    else:
        takeover = fired_at
        why = "another process may hold the key already"
        check = False
    return KillPlan(kill_at=min(takeover - KILL_SAFETY, fired_at + grace), why=why, check_session=check)


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when it no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials; the rest got the signal
        return True
    return True


# -- singleton run ----------------------------------------------------------------------------------


class _Run:
    """One ``singleton run``: wait for the lock, supervise the command, release. See the module docstring."""

    def __init__(self, args: argparse.Namespace, settings: Settings, out: _Output, gate: _Gate) -> None:
        self.args = args
        self.settings = settings
        self.out = out
        self.gate = gate
        self.command: list[str] = args.command
        self.elector = Elector(settings, name="singleton-run")
        self.waker = _Waker()
        self.signals: list[int] = []
        self._seen = 0  # how many of self.signals were acted on
        self.held = False
        gate.open = out.verbosity > 0

    def __call__(self) -> int:
        try:
            with _signals_to(self.waker, self.signals):
                try:
                    election = self.elector.register(self.args.key)
                    election.add_listener(lambda _election: self.waker.wake())
                    while True:
                        self._wait_for_lock(election)
                        token = election.token
                        code = None if token is None else self._supervise(election, token)
                        if code is not None:
                            return code
                finally:
                    self._close()
        finally:
            self.waker.close()

    def _close(self) -> None:
        """Release the key, then destroy the session; bounded, so an unreachable Consul cannot hold the exit.

        What is not done in time is done by Consul: the session expires after its TTL and frees the key
        after its lock-delay.
        """
        closer = threading.Thread(target=self.elector.close, args=(0,), name="singleton-run-close", daemon=True)
        closer.start()
        closer.join(self.settings.consul.timeout + 1.0)
        if closer.is_alive():
            self.out.note(
                f"Consul did not confirm the release of {self.args.key!r} in time; the session expires by "
                "itself after its TTL"
            )
        elif self.held:
            self.out.detail(f"released {self.args.key!r} and destroyed the session")

    # -- waiting --------------------------------------------------------------------------------

    def _interrupted(self) -> None:
        """Before the command runs: SIGINT, SIGTERM or SIGHUP ends the run, SIGTSTP stops this process."""
        while self._seen < len(self.signals):
            signum = self.signals[self._seen]
            self._seen += 1
            if signum == _SUSPEND:
                os.kill(os.getpid(), signal.SIGSTOP)  # what SIGTSTP would have done; SIGCONT resumes here
                continue
            self.out.note(f"{signal.Signals(signum).name} while waiting for {self.args.key!r}; not running the command")
            raise _Exit(128 + signum)

    def _forward(self, pgid: int) -> None:
        """While the command runs: forward SIGINT, SIGTERM and SIGHUP to it; SIGTSTP stops it with us.

        The command's process group is orphaned (a session of its own), so the kernel would discard a
        SIGTSTP: it gets SIGSTOP, and SIGCONT once this process is continued. If the lock's lease runs out
        meanwhile, the kill deadline has passed on resumption and SIGKILL follows at once.
        """
        while self._seen < len(self.signals):
            signum = self.signals[self._seen]
            self._seen += 1
            if signum == _SUSPEND:
                self.out.detail(f"suspending pid {pgid} and this process")
                _signal_group(pgid, signal.SIGSTOP)
                os.kill(os.getpid(), signal.SIGSTOP)
                _signal_group(pgid, signal.SIGCONT)
                continue
            self.out.detail(f"forwarding {signal.Signals(signum).name} to pid {pgid}")
            _signal_group(pgid, signum)

    def _wait_for_lock(self, election: Election) -> None:
        """Return once this process leads the key; otherwise raise _Exit with the code to exit with."""
        timeout = self.settings.consul.timeout
        began = time.monotonic()
        settle_by = began + 3 * timeout + 2  # a session, an acquisition and a read, each within timeout
        deadline: float | None = None
        if self.args.wait is not None:
            deadline = began + self.args.wait
        elif self.args.no_wait:
            deadline = settle_by + LOCK_DELAY_MAX  # a free key may be inside a lock-delay: wait it out
        settled = election.wait_settled(0)
        announced = False
        while True:
            self._interrupted()
            if election.is_leader:
                self.gate.open = True
                return
            now = time.monotonic()
            status = election.status()
            other = status.holder_session is not None and status.holder_session != status.session
            if not settled:
                settled = election.wait_settled(0)
                if settled:
                    # The first attempt decides whether Consul can be used at all.
                    why = None if election.is_leader else _failing(election.status())
                    if why is not None:
                        raise _attempt_failed(self.args.key, why)
                    self.gate.open = True
                elif now >= settle_by:
                    raise _Exit(
                        EXIT_UNAVAILABLE,
                        f"cannot reach Consul: {self.elector.backend.description} did not answer within "
                        f"{now - began:.0f}s; check CONSUL_HTTP_ADDR (or --address)",
                    )
            if settled and other:
                if self.args.no_wait:
                    raise _Exit(
                        EXIT_HELD_ELSEWHERE,
                        f"{self.args.key!r} is held by {status.holder or 'another session'}; "
                        "not running the command (--no-wait)",
                        error=False,
                    )
                if not announced:
                    self.out.detail(f"waiting for {self.args.key!r}, held by {status.holder or 'another session'}")
                    announced = True
            if deadline is not None and now >= deadline and settled:
                self._give_up(status, other)
            self.waker.wait(0.1)

    def _give_up(self, status: ElectionStatus, held_elsewhere: bool) -> NoReturn:
        waited = "--no-wait" if self.args.no_wait else f"--wait {self.args.wait:g}"
        why = _failing(status)
        if why is not None:
            raise _attempt_failed(self.args.key, why)
        holder = f"held by {status.holder}" if held_elsewhere and status.holder else (status.reason or "not acquired")
        raise _Exit(EXIT_HELD_ELSEWHERE, f"{self.args.key!r} not acquired ({waited}): {holder}", error=False)

    # -- supervising ----------------------------------------------------------------------------

    def _supervise(self, election: Election, token: StopToken) -> int | None:
        """Run the command for this term; its exit code, or None when the term ended before it started."""
        session = election.status().session or ""
        env = dict(os.environ)
        env.update(zip(_LOCK_ENV, (election.full_key, str(token.fence), session), strict=True))
        fired: list[float] = []

        def on_fire(_token: StopToken) -> None:
            fired.append(time.monotonic())
            self.waker.wake()

        token.add_callback(on_fire)  # first: the moment of the loss is what the kill deadline counts from
        self._interrupted()
        if token.wait(0):  # lost already: campaign again rather than start the command without the lock
            return None
        try:
            child = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as exc:
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
            raise _Exit(code, f"cannot run {self.command[0]!r}: {exc.strerror or exc}") from None
        self.held = True
        self.out.detail(f"acquired {self.args.key!r} (fence {token.fence}); started pid {child.pid}: {self.command}")
        reaper = threading.Thread(target=self._reap, args=(child,), name="singleton-run-reaper", daemon=True)
        reaper.start()
        plan: KillPlan | None = None
        killed = False
        while child.returncode is None:
            self._forward(child.pid)
            now = time.monotonic()
            if plan is None:
                if token.stopped:
                    fired_at = fired[0] if fired else now
                    reason = token.reason or "stopped"
                    plan = kill_deadline(
                        token.cause, election.spec, fired_at, token.lease_deadline, self.args.kill_grace
                    )
                    killed = self._stop_child(child, reason, plan, session)
                    continue
                # Wake at least every second, and at the lease's end: the token may fire by our own
                # read of it while the election thread is stuck in a call.
                remaining = token.remaining()
                timeout = min(1.0, remaining if remaining is not None else 1.0)
            elif not killed and now >= plan.kill_at:
                _signal_group(child.pid, signal.SIGKILL)
                killed = True
                self.out.detail(f"SIGKILL sent to pid {child.pid}")
                timeout = 1.0
            else:
                timeout = 1.0 if killed else plan.kill_at - now
            self.waker.wait(timeout)
        reaper.join()
        code = child.returncode
        if plan is None:
            return code if code >= 0 else 128 - code
        self._reap_group(child.pid, plan)
        return EXIT_LEADERSHIP_LOST

    def _reap(self, child: subprocess.Popen[bytes]) -> None:
        child.wait()
        self.waker.wake()

    def _stop_child(self, child: subprocess.Popen[bytes], reason: str, plan: KillPlan, session: str) -> bool:
        """SIGTERM now and SIGKILL at the deadline, or SIGKILL now if it is due. Returns whether killed."""
        left = plan.kill_at - time.monotonic()
        killed = left <= 0
        if killed:
            _signal_group(child.pid, signal.SIGKILL)
            action = f"SIGKILL sent at once ({plan.why})"
        else:
            _signal_group(child.pid, signal.SIGTERM)
            action = f"SIGTERM sent, SIGKILL in {left:.1f}s ({plan.why})"
            if plan.check_session and session:
                threading.Thread(
                    target=self._check_session,
                    args=(child.pid, session),
                    name="singleton-run-session-check",
                    daemon=True,
                ).start()
        self.out.note(f"lost the lock on {self.args.key!r}: {reason}; {action}")
        return killed

    def _check_session(self, pgid: int, session: str) -> None:
        """The key was released while our session may still exist: then nothing delays a takeover."""
        try:
            alive = self.elector.backend.session_info(session) is not None
        except BackendError as exc:
            why = f"could not read session {session} ({exc})"
        else:
            if not alive:
                return  # invalidated: the lock-delay holds the key, the deadline stands
            why = "the key was released explicitly, without lock-delay"
        if _signal_group(pgid, signal.SIGKILL):
            self.out.note(f"{why}: SIGKILL sent at once")

    def _reap_group(self, pgid: int, plan: KillPlan) -> None:
        """After a loss, nothing of the command's process group may outlive the kill deadline."""
        while time.monotonic() < plan.kill_at:
            if not _signal_group(pgid, 0):
                return
            self.waker.wait(min(0.1, plan.kill_at - time.monotonic()))
        _signal_group(pgid, signal.SIGKILL)


def _cmd_run(args: argparse.Namespace, out: _Output) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _Exit(EXIT_USAGE, "no command given (usage: singleton run --key KEY -- COMMAND [ARGS...])")
    args.command = command
    settings = _settings(args, ttl=args.ttl, lock_delay=args.lock_delay)
    settings.full_key(args.key)  # a bad key is a usage error before anything starts
    with _engine_logging(out) as gate:
        return _Run(args, settings, out, gate)()


# -- singleton status -------------------------------------------------------------------------------


def _since(flags: int) -> float | None:
    """The acquisition time this library writes in the key's flags, when they hold one."""
    now_ms = time.time() * 1000
    if _EPOCH_MS_MIN <= flags <= now_ms + 86_400_000:
        return flags / 1000
    return None


def _iso(epoch: float) -> str:
    text = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _describe(key: str, full_key: str, entry: KeyInfo | None, info: SessionInfo | None) -> dict[str, Any]:
    held = entry is not None and entry.session is not None
    since = _since(entry.flags) if entry is not None and held else None
    return {
        "key": key,
        "full_key": full_key,
        "exists": entry is not None,
        "held": held,
        "holder": entry.holder if entry is not None and held else None,
        "last_holder": entry.holder if entry is not None and not held else None,
        "since": _iso(since) if since is not None else None,
        "since_epoch": since,
        "session": entry.session if entry is not None else None,
        "session_name": info.name if info is not None else None,
        "node": info.node if info is not None else None,
        "ttl": info.ttl if info is not None else None,
        "lock_delay": info.lock_delay if info is not None else None,
        "fence": entry.modify_index if entry is not None and held else None,
        "lock_index": entry.lock_index if entry is not None else None,
    }


def _line(item: dict[str, Any]) -> str:
    if not item["held"]:
        if not item["exists"]:
            return f"{item['key']}: free (no such key)"
        last = f" (last held by {item['last_holder']})" if item["last_holder"] else ""
        return f"{item['key']}: free{last}"
    parts = [f"{item['key']}: held by {item['holder'] or '?'}"]
    if item["since_epoch"] is not None:
        parts.append(f"for {_age(time.time() - item['since_epoch'])} (since {item['since']})")
    session = f"session {item['session']}"
    if item["session_name"] and item["session_name"] != item["holder"]:
        session += f" {item['session_name']!r}"
    if item["ttl"] is not None:
        session += f" (ttl {item['ttl']:g}s, lock-delay {item['lock_delay']:g}s)"
    parts.append(session)
    parts.append(f"fence {item['fence']}")
    return parts[0] + " " + ", ".join(parts[1:])


def _cmd_status(args: argparse.Namespace, stdout: TextIO) -> int:
    settings = _settings(args)
    wanted = [(key, settings.full_key(key)) for key in args.keys]
    backend = create_backend(settings)
    items: list[dict[str, Any]] = []
    try:
        if wanted:
            found = [(key, full_key, backend.read(full_key)[1]) for key, full_key in wanted]
        else:
            prefix = settings.key_prefix
            found = [(e.key[len(prefix) :], e.key, e) for e in backend.list_keys(prefix) if e.session is not None]
        for key, full_key, entry in found:
            info = None
            if entry is not None and entry.session is not None:
                try:
                    info = backend.session_info(entry.session)
                except AccessDenied:  # the holder is still known from the key; the session's details are extra
                    info = None
            items.append(_describe(key, full_key, entry, info))
    except BackendError as exc:
        raise _unavailable(exc) from None
    finally:
        backend.close()
    if args.json:
        print(json.dumps(items, indent=2), file=stdout)
    elif not items:
        print(f"no key is held under {settings.key_prefix or 'the root'!r}", file=stdout)
    else:
        for item in items:
            print(_line(item), file=stdout)
    held = [item for item in items if item["held"]]
    if wanted:
        return EXIT_OK if len(held) == len(items) else EXIT_FREE
    return EXIT_OK if held else EXIT_FREE


# -- entry point ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the ``singleton`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Never raises for bad arguments, bad settings or an unavailable Consul: each is one line on
    ``stderr`` and an exit code (see the module docstring).
    """
    out_stream = stdout if stdout is not None else sys.stdout
    err_stream = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    prog = "singleton"
    quiet = False
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        prog = f"singleton {args.subcommand}"
        quiet = args.quiet
        out = _Output(prog, -1 if args.quiet else 1 if args.verbose else 0, err_stream)
        if args.subcommand == "run":
            return _cmd_run(args, out)
        return _cmd_status(args, out_stream)
    except _Exit as exc:
        if exc.message and (exc.error or not quiet):
            prog = exc.prog or prog
            message = f"{prog}: error: {exc.message}" if exc.error else f"{prog}: {exc.message}"
            with contextlib.suppress(OSError, ValueError):
                print(" ".join(message.split()), file=err_stream, flush=True)
        return exc.code
    except ConfigurationError as exc:
        print(f"{prog}: error: {exc}", file=err_stream, flush=True)
        return EXIT_USAGE
    except BackendError as exc:
        print(f"{prog}: error: {exc}", file=err_stream, flush=True)
        return EXIT_UNAVAILABLE
    except SingletonError as exc:
        print(f"{prog}: error: {exc}", file=err_stream, flush=True)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `singleton status | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from complaining at exit
        return EXIT_OK
