"""``singleton run``: wait for the lock, run the command while holding it, release it.

1. Campaigns for the key on the election engine: one session (``--ttl``, ``--lock-delay``) whose name
   and key value are ``hostname:pid`` of this ``singleton`` process.
2. The first acquisition attempt decides whether Consul can be used at all: an unreachable agent or an
   ACL denial ends the run with exit 69 and one line saying why; the command is not started.
3. Waits for the lock (:meth:`Election.acquire <singleton.election.Election.acquire>`): for ever by
   default, up to ``--wait S``, or not at all with ``--no-wait`` (a key that is free but still inside
   a lock-delay is waited for, at most the lock-delay). When it
   gives up because another process holds the key, that process runs the command: the exit code is 0
   and the reason is printed only with ``-v`` (cron mails nothing from the hosts that skip), or 75 and
   the reason with ``--fail-if-held``. Not acquired within ``--wait S`` for another reason: 75.
4. Starts the command in a session of its own (``setsid``), so that signals reach every process of it
   and none outlives a lost lock, with ``SINGLETON_LOCK_KEY``, ``SINGLETON_LOCK_FENCE`` (the fencing
   index of this term) and ``SINGLETON_LOCK_SESSION`` in its environment.
5. Forwards SIGINT, SIGTERM and SIGHUP to the command's process group, and keeps waiting for it.
   SIGTSTP (^Z) stops the command (SIGSTOP: its group is orphaned, a SIGTSTP would be discarded) and
   then this process; SIGCONT resumes both. A lease that ran out meanwhile means SIGKILL on resumption.
6. When the lock is lost (the stop token fires) it sends SIGTERM to the group, then SIGKILL at the
   *kill deadline*: :data:`KILL_SAFETY` seconds before the earliest moment another process could hold
   the key, and never more than ``--kill-grace`` seconds after the SIGTERM:

   * the local lease ran out (no renewal reached Consul), or the key was released by Consul (the
     session was invalidated): Consul may have ended the session right after the last successful
     renewal was sent (``lease`` seconds before the lease's end: a node deregistration does that), and
     the key then stays locked for ``lock_delay`` seconds, so the deadline is
     ``lease end - lease + lock_delay - KILL_SAFETY`` (the lock-delay outlasts the lease, so this is
     after the lease's end). After a release the session is looked up at once, and if it still exists
     (the key was released explicitly, with no lock-delay) SIGKILL follows immediately;
   * the key was deleted or taken by another session, a renewal found the session gone (when it went
     is unknown), or anything else: another process may hold the key already, so SIGKILL at once;
   * an operator paused the key or asked this process to step down (``singleton pause``, ``step-down``):
     the command runs as a leader-only body, so the key stays held until it has exited; SIGKILL follows
     ``--kill-grace`` seconds after the SIGTERM.

   The run then ends with exit 76 once the command has exited.
7. When the command exits the key is released and the session destroyed (release first: a follower
   takes over at once, without lock-delay), and ``singleton`` exits with the command's code
   (``128 + N`` when it was killed by signal N).

If ``singleton`` itself is killed with SIGKILL it cannot stop the command: the command then runs
on while the session expires. Processes the command leaves behind in other sessions are not tracked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from singleton.cli._common import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    Exit,
    Gate,
    Output,
    attempt_failed,
    engine_logging,
    failing,
    settings_from,
)
from singleton.config import LeaseOverrides, LeaseSpec, Settings
from singleton.election import AcquireOutcome, Election, Elector, Phase
from singleton.errors import BackendError, LeadershipLost
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_LEADERSHIP_LOST, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from singleton.token import StopCause, StopToken

__all__ = ["DEFAULT_KILL_GRACE", "KILL_SAFETY", "KillPlan", "cmd_run", "kill_deadline"]

#: SIGKILL goes out this many seconds before the earliest takeover: room for this process's own
#: scheduling delay on a busy host and for the round trip in which the loss was seen.
KILL_SAFETY = 0.5
#: Default upper bound of the SIGTERM-to-SIGKILL grace (``--kill-grace``).
DEFAULT_KILL_GRACE = 10.0

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Caught too: ^Z stops the command with this process, which a session of its own would not.
_SUSPEND = signal.SIGTSTP
_LOCK_ENV = ("SINGLETON_LOCK_KEY", "SINGLETON_LOCK_FENCE", "SINGLETON_LOCK_SESSION")
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
    assert spec.lock_delay is not None
    # The last successful renewal was sent ``lease`` seconds before the lease's end. Consul may have
    # ended the session at once after it (a node deregistration), and then nobody can take the key for
    # the lock-delay: that is the earliest takeover whenever the session was invalidated.
    renewed = (lease_end if lease_end is not None else fired_at) - spec.lease
    if cause is not None and cause.by_operator:
        # The command is a running body: a paused holder keeps the key, one stepping down releases it
        # only once its bodies have ended. Nobody else can start before the command is gone.
        return KillPlan(kill_at=fired_at + grace, why="the key stays held until the command has exited")
    if cause is StopCause.KEY_RELEASED:
        takeover = renewed + spec.lock_delay
        why = f"the session was invalidated: nobody can take the key for its {spec.lock_delay:g}s lock-delay"
        check = True
    elif cause is StopCause.LEASE_EXPIRED and lease_end is not None:
        takeover = renewed + spec.lock_delay
        why = (
            f"Consul may have ended the session right after the last renewal, and the key then stays locked "
            f"{spec.lock_delay:g}s"
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

    def __init__(
        self, args: argparse.Namespace, settings: Settings, lease: LeaseOverrides, out: Output, gate: Gate
    ) -> None:
        self.args = args
        self.settings = settings
        self.lease = lease
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
                    election = self.elector.register(self.args.key, overrides=self.lease)
                    election.add_listener(lambda _election: self.waker.wake())
                    while True:
                        token = self._wait_for_lock(election)
                        code = self._supervise(election, token)
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
            raise Exit(128 + signum)

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

    def _wait_for_lock(self, election: Election) -> StopToken:
        """The term's token once this process leads the key; otherwise raise Exit with the code to exit with."""
        timeout = self.settings.consul.timeout
        announced = False

        def interrupt() -> None:
            nonlocal announced
            self._interrupted()
            if not self.gate.open and election.wait_settled(0) and failing(election.status()) is None:
                self.gate.open = True  # past the first attempt: the engine's own warnings may show now
            if not announced and election.phase is Phase.WATCHING:
                announced = True
                self.out.detail(f"waiting for {self.args.key!r}, held by {election.holder or 'another session'}")

        wait = 0.0 if self.args.no_wait else self.args.wait
        waited = "--no-wait" if self.args.no_wait else "waited for ever" if wait is None else f"--wait {wait:g}"
        # The first attempt: a session, an acquisition and a read, each within the HTTP timeout.
        result = election.acquire(wait, settle_timeout=3 * timeout + 2, interrupt=interrupt)
        if result.outcome is AcquireOutcome.LEADER:
            assert result.token is not None
            self.gate.open = True
            return result.token
        if result.outcome is AcquireOutcome.HELD_ELSEWHERE:
            raise self._held_elsewhere(result.holder, waited)
        if result.outcome is AcquireOutcome.PAUSED:  # as held elsewhere: an operator meant nobody to run it
            message = f"{self.args.key!r} is {result.reason or 'paused'}; not running the command ({waited})"
            if self.args.fail_if_held:
                raise Exit(EXIT_HELD_ELSEWHERE, message, error=False)
            raise Exit(EXIT_OK, message, error=False, detail=True)
        if result.error is not None:
            raise attempt_failed(self.args.key, result.reason or str(result.error))
        if not election.wait_settled(0):
            raise Exit(EXIT_UNAVAILABLE, f"cannot reach Consul: {result.reason}; check CONSUL_HTTP_ADDR (or --address)")
        raise Exit(EXIT_HELD_ELSEWHERE, f"{self.args.key!r} not acquired ({waited}): {result.reason}", error=False)

    def _held_elsewhere(self, holder: str | None, waited: str) -> Exit:
        """Another process holds the key, so it runs the command: exit 0 quietly, or 75 with --fail-if-held."""
        message = f"{self.args.key!r} is held by {holder or 'another session'}; not running the command here ({waited})"
        if self.args.fail_if_held:
            return Exit(EXIT_HELD_ELSEWHERE, message, error=False)
        return Exit(EXIT_OK, message, error=False, detail=True)

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
            # A leader-only body: a step-down keeps the key held until the command has exited.
            with election.body(token):
                return self._run_child(election, token, env, fired, session)
        except LeadershipLost:  # fired between the look above and the body's
            return None

    def _run_child(
        self, election: Election, token: StopToken, env: dict[str, str], fired: list[float], session: str
    ) -> int:
        try:
            child = subprocess.Popen(self.command, env=env, start_new_session=True)
        except OSError as exc:
            code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
            raise Exit(code, f"cannot run {self.command[0]!r}: {exc.strerror or exc}") from None
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
                    plan = kill_deadline(
                        token.cause, election.spec, fired_at, token.lease_deadline, self.args.kill_grace
                    )
                    killed = self._stop_child(child, token, plan, session)
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

    def _stop_child(self, child: subprocess.Popen[bytes], token: StopToken, plan: KillPlan, session: str) -> bool:
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
        cause = token.cause
        what = "stopping the command" if cause is not None and cause.by_operator else "lost the lock"
        self.out.note(f"{what} on {self.args.key!r}: {token.reason or 'stopped'}; {action}")
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


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    """``singleton run``: its exit code (see the module docstring)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise Exit(EXIT_USAGE, "no command given (usage: singleton run --key KEY -- COMMAND [ARGS...])")
    args.command = command
    settings = settings_from(args)
    settings.full_key(args.key)  # a bad key or lease is a usage error before anything starts
    lease = LeaseOverrides.checked(
        ttl=args.ttl,
        lock_delay=args.lock_delay,
        check_ttl=args.check_ttl,
        names={"ttl": "--ttl", "lock_delay": "--lock-delay", "check_ttl": "--check-ttl"},
    )
    settings.lease.derive(lease)
    with engine_logging(out) as gate:
        return _Run(args, settings, lease, out, gate)()
