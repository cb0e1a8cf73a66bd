"""``LeaderOnlyCommand``: a management command whose ``handle()`` runs only on the holder of its Consul lock.

::

    from singleton import current_token
    from singleton.contrib.django import LeaderOnlyCommand

    class Command(LeaderOnlyCommand):          # myapp/management/commands/send_reports.py
        leader_ttl = 30                        # optional class defaults: leader_key, leader_ttl,
                                               # leader_wait, leader_fail_if_held
        def add_arguments(self, parser):       # no super() call needed
            parser.add_argument("--day")

        def handle(self, *args, **options):
            token = current_token()
            for batch in batches():
                token.raise_if_stopped()       # leadership lost: stop here (exit 76)
                send(batch)

Every subclass gets these options (added by :meth:`LeaderOnlyCommand.create_parser`, after the
subclass's own ``add_arguments``):

``--leader-key KEY``        the lock's key under ``KEY_PREFIX``; default the command's name
``--leader-ttl SECONDS``    session TTL, 10..86400; default ``settings.SINGLETON['TTL']`` (15)
``--leader-wait SECONDS``   when another process holds the lock, wait up to this long for it (0..86400;
                            default 0: do not wait)
``--leader-fail-if-held``   exit 75 instead of 0 when another process holds the lock
``--no-leader``             run without the lock and without Consul (an escape hatch)

What happens, and the exit code (:mod:`singleton.exitcodes`; the same for ``manage.py leader_only``)
----------------------------------------------------------------------------------------------------
*This process gets the lock.* The command runs (system checks, ``handle()``, output) and exits with its
own code; the lock is released as soon as it finishes, so the next run elsewhere need not wait out a
TTL. Inside ``handle()``, :func:`singleton.current_token` is the term's
:class:`~singleton.token.StopToken`.

*Another process holds it.* That process runs it: ``handle()`` does not run here, and the exit code is
0 (``EXIT_OK``) with nothing printed, so that cron on every host mails nothing from the hosts that skip
(``-v 2`` prints one line on stderr naming the holder, ``hostname:pid``). With ``--leader-fail-if-held``
the exit code is 75 (``EXIT_HELD_ELSEWHERE``), for monitoring, and the line is printed (as Django
prints a CommandError). The same rule as ``singleton run --no-wait`` and ``--fail-if-held``. With
``--leader-wait`` the command waits that long for the lock first. A key that is free but inside a lock-delay (its last
holder died) is waited for in any case: the delay ends within 60 s and then one process gets it.

*Consul cannot be reached, or refuses us (ACL).* ``handle()`` does not run: a process that cannot prove
it holds the lock never runs the command. One line says why, and the exit code is 69
(``EXIT_UNAVAILABLE``); no traceback. ``--no-leader`` runs the command anyway, without Consul.

*Leadership is lost while the command runs* (the session was invalidated, the key deleted or taken,
Consul unreachable for longer than the lease). The stop token fires: within a round trip when Consul
says so, and, when Consul cannot be reached, at least ``margin`` seconds before another process could
get the lock. Nothing interrupts ``handle()``: it should check the token between units of work
(``current_token().raise_if_stopped()``, ``token.stopped``, ``token.wait(seconds)``) and stop. The
exit code is then 76 (``EXIT_LEADERSHIP_LOST``) whether ``handle()`` raised
:class:`~singleton.errors.LeadershipLost` or returned, since the work may be unfinished and may overlap
the next holder's. An operator's ``singleton pause`` or ``step-down`` fires the token too (the lock
stays held until ``handle()`` returns), with the same exit code and a message that says so. Any other
exception of ``handle()`` propagates as usual (with its own exit code).

*--no-leader.* The command runs here whatever Consul says (Consul is not contacted);
:func:`singleton.current_token` is a token that never fires.

*Bad options or settings* (``--leader-ttl 5``, ``--leader-key /x``, a bad ``settings.SINGLETON``): a
CommandError names the option or setting and its allowed range, before anything runs; exit code 64
(``EXIT_USAGE``), one line, no traceback. Commands that do not take the lock are not stopped by a bad
``settings.SINGLETON``: with the app installed, Django's system checks list it as the warning
``singleton.W001`` (see :mod:`singleton.contrib.django.apps`).

Called with :func:`django.core.management.call_command`, the same outcomes raise ``CommandError`` with
``returncode`` set (a lock held elsewhere returns None, unless ``leader_fail_if_held=True``).

The lock belongs to the command run: it has its own Consul session, closed when the run ends. A
``@leader_only`` function called from ``handle()`` campaigns separately (in the process-wide elector),
so it must not use the command's key. SIGTERM (systemd, ``docker stop``, Kubernetes) fires the
token and hands the lock over once ``handle()`` returns (within ``shutdown_grace``), then ends the
process by SIGTERM as Python would have (see ``singleton._signals``; a SIGTERM handler of the project's
own is left alone). SIGKILL ends the process without a release: the lock then frees itself after the
TTL and the lock-delay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.management.base import (  # type: ignore[import-untyped, unused-ignore]
    BaseCommand,
    CommandError,
    OutputWrapper,
)

from singleton._text import one_line
from singleton.config import TTL_MAX, TTL_MIN, LeaseOverrides, Settings, check_range, validate_key
from singleton.contrib.django import conf
from singleton.election import AcquireOutcome, Election, Elector, Phase
from singleton.errors import ConfigurationError, LeadershipLost
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_LEADERSHIP_LOST, EXIT_UNAVAILABLE, EXIT_USAGE
from singleton.token import StopToken

__all__ = ["LeaderOnlyCommand", "LeaderPlan", "run_exclusively"]

T = TypeVar("T")

#: The longest ``--leader-wait`` (a day).
WAIT_MAX = 86400.0


@dataclass(frozen=True)
class LeaderPlan:
    """What one run of a leader-only command asks for: validated, before anything runs."""

    key: str
    #: The key's lease settings (its TTL); empty means the settings' defaults.
    lease: LeaseOverrides
    #: Seconds to wait for the lock when another process holds it.
    wait: float
    fail_if_held: bool
    no_leader: bool
    settings: Settings

    @classmethod
    def build(
        cls,
        *,
        key: tuple[object, str],
        ttl: tuple[object, str],
        wait: tuple[object, str],
        fail_if_held: bool,
        no_leader: bool,
        check_ttl: tuple[object, str] = (None, "check_ttl"),
    ) -> LeaderPlan:
        """Validate each ``(value, name)`` pair (``name`` is what error messages call it) and the settings.

        :raises CommandError: with ``returncode`` EXIT_USAGE, naming the option or setting and its range.
        """
        try:
            checked_key = validate_key(key[0], key[1])
            lease = LeaseOverrides.checked(
                ttl=ttl[0], check_ttl=check_ttl[0], names={"ttl": ttl[1], "check_ttl": check_ttl[1]}
            )
            checked_wait = 0.0 if wait[0] is None else check_range(wait[1], wait[0], 0.0, WAIT_MAX)
            settings = conf.get_settings()
            settings.lease.derive(lease)
            settings.full_key(checked_key)
        except ConfigurationError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        return cls(checked_key, lease, checked_wait, bool(fail_if_held), bool(no_leader), settings)


@dataclass(frozen=True)
class _NotRun:
    """Why the command did not run here: ``holder`` set means another process holds the lock."""

    holder: str | None
    reason: str
    #: An operator paused the key: nobody runs it (``reason`` says who and until when).
    paused: bool = False


def _one_line(text: str) -> str:
    return one_line(text)  # what Consul holds or said: escaped for the terminal


def run_exclusively(
    plan: LeaderPlan, body: Callable[[], T], *, label: str, stderr: Any, verbosity: int = 1
) -> T | None:
    """Run ``body()`` only while this process holds ``plan.key``; return its result (None if not run).

    A fresh :class:`~singleton.election.Elector` (one session) campaigns for the key; it is closed when
    this returns or raises, which releases the key at once. ``body`` runs with the term's stop token as
    :func:`singleton.current_token` (with ``plan.no_leader``: a token that never fires, and no Consul).
    ``label`` starts every message written to ``stderr`` (a Django ``OutputWrapper``).

    :raises CommandError: ``returncode`` EXIT_HELD_ELSEWHERE (held elsewhere and ``plan.fail_if_held``),
        EXIT_UNAVAILABLE (Consul unreachable or refusing: ``body`` did not run), or EXIT_LEADERSHIP_LOST
        (the token fired while ``body`` ran). Whatever ``body`` raises otherwise propagates unchanged.
    """
    if plan.no_leader:
        if verbosity >= 2:
            stderr.write(f"{label}: running without the lock (--no-leader)")
        with StopToken(plan.key).activate():
            return body()
    full_key = plan.settings.full_key(plan.key)
    elector = Elector(plan.settings, name=f"singleton-django[{plan.key}]")
    quiet = _quiet_engine_logs()
    try:
        election = elector.register(plan.key, overrides=plan.lease)
        outcome = _acquire(election, plan, label=label, stderr=stderr, verbosity=verbosity)
        if isinstance(outcome, _NotRun):
            if outcome.holder is None:
                raise CommandError(
                    f"{label}: not run: cannot prove this process holds the lock {full_key!r}: "
                    f"{_one_line(outcome.reason)}",
                    returncode=EXIT_UNAVAILABLE,
                )
            mine = " (another elector of this very process)" if outcome.holder == elector.identity else ""
            message = f"{label}: not run here: the lock {full_key!r} is held by {_one_line(outcome.holder)}{mine}"
            if outcome.paused:  # treated as held elsewhere: quiet unless asked, as an operator meant it
                message = f"{label}: not run: {full_key!r} is {_one_line(outcome.reason)}"
            # The holder runs it: quiet success, unless a failure code was asked for.
            if plan.fail_if_held:
                raise CommandError(message, returncode=EXIT_HELD_ELSEWHERE)
            if verbosity >= 2:
                stderr.write(message)
            return None
        return _run_body(election, outcome, body, full_key=full_key, label=label, stderr=stderr, verbosity=verbosity)
    finally:
        elector.close(grace=0)
        if quiet is not None:
            logging.getLogger("singleton").removeHandler(quiet)


def _quiet_engine_logs() -> logging.Handler | None:
    """While a command runs, keep the engine's warnings from stderr when nobody configured logging.

    Without a handler for "singleton" (or the root), they would go to stderr through
    ``logging.lastResort`` and bury the command's own one-line reason, which says the same. Scoped to
    the command run: a web process's engine warnings are untouched.
    """
    logger = logging.getLogger("singleton")
    if logger.hasHandlers():
        return None
    handler = logging.NullHandler()
    logger.addHandler(handler)
    return handler


def _acquire(election: Election, plan: LeaderPlan, *, label: str, stderr: Any, verbosity: int) -> StopToken | _NotRun:
    """The term's token once this process leads the key, or why it does not (after ``plan.wait``)."""
    settings = plan.settings
    announced = False

    def interrupt() -> None:
        nonlocal announced
        if verbosity >= 2 and not announced and plan.wait > 0 and election.phase is Phase.WATCHING:
            announced = True
            stderr.write(f"{label}: waiting up to {plan.wait:g}s for the lock, held by {election.holder}")

    # The first attempt: about one round trip; bounded by the HTTP timeout when Consul hangs.
    settle = max(settings.startup_timeout, settings.consul.timeout + 1.0)
    result = election.acquire(plan.wait, settle_timeout=settle, interrupt=interrupt if verbosity >= 2 else None)
    if result.outcome is AcquireOutcome.LEADER:
        assert result.token is not None
        return result.token
    if result.outcome is AcquireOutcome.HELD_ELSEWHERE:
        return _NotRun(result.holder or "another session", result.reason or "held elsewhere")
    if result.outcome is AcquireOutcome.PAUSED:
        return _NotRun(result.holder or "nobody", result.reason or "paused", paused=True)
    return _NotRun(None, result.reason or "the key could not be acquired")


def _run_body(
    election: Election,
    token: StopToken,
    body: Callable[[], T],
    *,
    full_key: str,
    label: str,
    stderr: Any,
    verbosity: int,
) -> T:
    if verbosity >= 2:
        stderr.write(f"{label}: holding the lock {full_key!r} (fence {token.fence})")
    try:
        with election.body(token):
            result = body()
    except LeadershipLost as exc:
        if not token.stopped:  # some other token (a nested @leader_only call): not ours to judge
            raise
        raise _lost(token, full_key, label) from exc
    if token.stopped:
        raise _lost(token, full_key, label)
    return result


def _lost(token: StopToken, full_key: str, label: str) -> CommandError:
    reason = _one_line(token.reason or "stopped")
    if token.cause is not None and token.cause.by_operator:  # the lock is still ours: not "lost"
        message = f"{label}: told to stop while holding the lock {full_key!r} ({reason}); it may not have finished"
    else:
        message = (
            f"{label}: lost the lock {full_key!r} while running ({reason}); "
            "the command was told to stop and may not have finished"
        )
    return CommandError(message, returncode=EXIT_LEADERSHIP_LOST)


class LeaderOnlyCommand(BaseCommand):  # type: ignore[misc, unused-ignore]
    """A ``BaseCommand`` that runs only on the process holding its Consul lock; see the module docstring.

    Class attributes give a command's defaults; the ``--leader-*`` options override them per run.
    """

    #: The lock's key (under the settings' ``KEY_PREFIX``); None means the command's name.
    leader_key: str | None = None
    #: The session TTL in seconds (10..86400); None means the settings' default.
    leader_ttl: float | None = None
    #: Fast failover's health-check TTL (1..ttl/2 s); None means the settings' default (off).
    leader_check_ttl: float | None = None
    #: How long to wait for the lock when another process holds it.
    leader_wait: float = 0.0
    #: Exit 75 (EXIT_HELD_ELSEWHERE) instead of 0 when another process holds the lock.
    leader_fail_if_held: bool = False

    _leader_command_name: str | None = None

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        """Django's parser (with the subclass's ``add_arguments``) plus the ``--leader-*`` options."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if subcommand:
            self._leader_command_name = subcommand
        group = parser.add_argument_group("leader election (singleton)")
        group.add_argument(
            "--leader-key",
            metavar="KEY",
            help=f"Consul key of the lock, under the configured key prefix (default: {self.default_leader_key()!r}).",
        )
        group.add_argument(
            "--leader-ttl",
            metavar="SECONDS",
            help=f"Session TTL, {TTL_MIN:g} to {TTL_MAX:g} seconds (default: settings.SINGLETON['TTL'] or 15).",
        )
        group.add_argument(
            "--leader-check-ttl",
            metavar="SECONDS",
            help="Fast failover: a health-check TTL (1 to TTL/2 seconds) linked to the session, so that a "
            "crashed holder is replaced about SECONDS + lock-delay later (default: settings.SINGLETON['CHECK_TTL'], off).",
        )
        group.add_argument(
            "--leader-wait",
            metavar="SECONDS",
            help="When another process holds the lock, wait up to SECONDS for it (default: 0, do not wait).",
        )
        group.add_argument(
            "--leader-fail-if-held",
            action="store_true",
            help=f"Exit with {EXIT_HELD_ELSEWHERE} instead of 0 (quietly) when another process holds the lock, "
            "and say which.",
        )
        group.add_argument(
            "--no-leader",
            action="store_true",
            help="Run without the lock and without Consul.",
        )
        return parser

    def command_name(self) -> str:
        """The command's name: as invoked, else its module's name (as Django names commands)."""
        return self._leader_command_name or type(self).__module__.rsplit(".", 1)[-1]

    def default_leader_key(self) -> str:
        """``leader_key``, or the command's name."""
        return self.leader_key or self.command_name()

    def leader_plan(self, options: dict[str, Any]) -> LeaderPlan:
        """The run's plan from its options and the class defaults.

        :raises CommandError: EXIT_USAGE for a bad option, class attribute or setting.
        """
        cls = f"{type(self).__module__}.{type(self).__qualname__}"
        key = options.get("leader_key")
        ttl = options.get("leader_ttl")
        check_ttl = options.get("leader_check_ttl")
        wait = options.get("leader_wait")
        return LeaderPlan.build(
            key=(key, "--leader-key") if key is not None else (self.default_leader_key(), f"{cls}.leader_key"),
            ttl=(ttl, "--leader-ttl") if ttl is not None else (self.leader_ttl, f"{cls}.leader_ttl"),
            wait=(wait, "--leader-wait") if wait is not None else (self.leader_wait, f"{cls}.leader_wait"),
            fail_if_held=bool(options.get("leader_fail_if_held")) or self.leader_fail_if_held,
            no_leader=bool(options.get("no_leader")),
            check_ttl=(check_ttl, "--leader-check-ttl")
            if check_ttl is not None
            else (self.leader_check_ttl, f"{cls}.leader_check_ttl"),
        )

    def execute(self, *args: Any, **options: Any) -> Any:
        """Validate the leader options, then run Django's ``execute()`` only while holding the lock.

        :raises CommandError: see the module docstring (EXIT_USAGE, EXIT_HELD_ELSEWHERE with
            ``--leader-fail-if-held``, EXIT_UNAVAILABLE, EXIT_LEADERSHIP_LOST).
        """
        # Django's execute() does this too; our messages come first and must reach the same streams.
        if options.get("stdout"):
            self.stdout = OutputWrapper(options["stdout"])
        if options.get("stderr"):
            self.stderr = OutputWrapper(options["stderr"])
        plan = self.leader_plan(options)
        execute = super().execute
        return run_exclusively(
            plan,
            lambda: execute(*args, **options),
            label=self.command_name(),
            stderr=self.stderr,
            verbosity=int(options.get("verbosity", 1)),
        )
