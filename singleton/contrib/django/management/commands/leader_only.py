"""``manage.py leader_only [--key K] [--ttl S] [--wait S] [--fail-if-held] [--no-leader] COMMAND [ARGS...]``.

Runs another management command, one you cannot edit, only on the process that holds its Consul lock.
The options above go *before* COMMAND; everything after COMMAND is the wrapped command's, passed to it
exactly as given (``--`` included), so ``leader_only clearsessions -v 2`` gives ``-v 2`` to clearsessions.

* The key defaults to COMMAND's name (so ``leader_only send_reports`` and a ``LeaderOnlyCommand``
  named ``send_reports`` share one lock); ``--ttl`` and ``--wait`` are ``--leader-ttl`` and
  ``--leader-wait`` of :class:`~singleton.contrib.django.LeaderOnlyCommand`.
* The wrapped command parses its arguments itself, first, before the lock is asked for: a usage error
  exits 2 on every host and ``leader_only COMMAND --help`` prints COMMAND's help, neither needing Consul.
* Under the lock it runs through its own ``run_from_argv``: its output, its error messages and its exit
  code (``CommandError(returncode=...)``, ``sys.exit``) are what they would be without the wrapper. Its
  ``handle()`` sees :func:`singleton.current_token`.
* Otherwise the outcomes and exit codes are those of ``LeaderOnlyCommand`` (0 or 75 when the lock is
  held elsewhere, 69 when Consul is unavailable, 76 when leadership is lost while it runs, 64 for bad
  options or settings). A ``LeaderOnlyCommand`` is not wrapped twice: it gets these options as its
  ``--leader-*`` options and takes its lock itself.

From ``call_command("leader_only", "COMMAND", "arg", ...)`` the wrapped command is run with
``call_command`` (its errors raise ``CommandError``); the wrapper returns None.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from django.core.management import (  # type: ignore[import-untyped, unused-ignore]
    call_command,
    get_commands,
    load_command_class,
)
from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped, unused-ignore]

from singleton.contrib.django.command import LeaderOnlyCommand, LeaderPlan, run_exclusively
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_USAGE


def split_argv(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(ours, theirs)``: the wrapper's options up to and including COMMAND, then COMMAND's arguments.

    ``parser`` must not allow abbreviations, so every option of ours is recognised exactly here. A
    token that is neither one of our options, nor its value, nor ``--`` is COMMAND.
    """
    actions = parser._option_string_actions
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return list(tokens[: i + 2]), list(tokens[i + 2 :])
        if token == "-" or not token.startswith("-"):
            return list(tokens[: i + 1]), list(tokens[i + 1 :])
        i += 1
        if token.startswith("--") and "=" in token:
            continue  # --ttl=30
        action = actions.get(token)
        if action is not None and action.nargs != 0:
            i += 1  # its value, even one that starts with "-"
    return list(tokens), []


class Command(BaseCommand):  # type: ignore[misc, unused-ignore]
    help = (
        "Run another management command only on the process that holds its Consul lock "
        "(options of leader_only go before COMMAND)."
    )
    # The wrapped command runs its own checks.
    requires_system_checks: list[str] = []  # noqa: RUF012 - Django's own spelling of "none"

    _prog_name = "manage.py"
    _raw_args: list[str] | None = None

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        kwargs.setdefault("allow_abbrev", False)  # split_argv must see our options exactly
        if prog_name:
            self._prog_name = prog_name
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--key", metavar="KEY", help="Consul key of the lock (default: COMMAND's name).")
        parser.add_argument("--ttl", metavar="SECONDS", help="Session TTL, 10 to 86400 seconds.")
        parser.add_argument(
            "--check-ttl", metavar="SECONDS", help="Fast failover: a health-check TTL, 1 to TTL/2 seconds."
        )
        parser.add_argument(
            "--wait", metavar="SECONDS", help="When another process holds the lock, wait up to SECONDS for it."
        )
        parser.add_argument(
            "--fail-if-held",
            action="store_true",
            help=f"Exit with {EXIT_HELD_ELSEWHERE} instead of 0 (quietly) when another process holds the lock, "
            "and say which.",
        )
        parser.add_argument("--no-leader", action="store_true", help="Run COMMAND without the lock and without Consul.")
        parser.add_argument("command", metavar="COMMAND", help="The management command to run.")
        parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help="COMMAND's own arguments.")

    def run_from_argv(self, argv: list[str]) -> None:
        """Parse our options up to COMMAND; keep COMMAND's arguments verbatim for it."""
        parser = self.create_parser(argv[0], argv[1])
        ours, theirs = split_argv(parser, argv[2:])
        self._raw_args = theirs
        super().run_from_argv([argv[0], argv[1], *ours])

    def handle(self, *args: Any, **options: Any) -> None:
        """Validate, let COMMAND parse its arguments, then run it under the lock (see the module docstring).

        :raises CommandError: EXIT_USAGE (bad option, setting or COMMAND), EXIT_HELD_ELSEWHERE
            (``--fail-if-held``), EXIT_UNAVAILABLE, EXIT_LEADERSHIP_LOST; from ``call_command``, also
            COMMAND's own errors.
        :raises SystemExit: COMMAND's exit code, from the command line.
        """
        name = str(options["command"])
        from_command_line = bool(getattr(self, "_called_from_command_line", False))  # set by run_from_argv()
        rest = list(self._raw_args) if from_command_line and self._raw_args is not None else [str(a) for a in args]
        wrapped = _load(name)
        plan = LeaderPlan.build(
            key=(options["key"], "--key") if options["key"] is not None else (_default_key(wrapped, name), "COMMAND"),
            ttl=(options["ttl"], "--ttl"),
            check_ttl=(options["check_ttl"], "--check-ttl"),
            wait=(options["wait"], "--wait"),
            fail_if_held=options["fail_if_held"],
            no_leader=options["no_leader"],
        )
        streams = {k: options[k] for k in ("stdout", "stderr") if options.get(k)}
        if isinstance(wrapped, LeaderOnlyCommand):
            # It takes its own lock: hand it our options under its names, and do not wrap it twice.
            rest = [*_as_leader_options(options), *rest]
            _run(wrapped, name, rest, self._prog_name, from_command_line, streams)()
            return
        body = _run(wrapped, name, rest, self._prog_name, from_command_line, streams)
        run_exclusively(plan, body, label=name, stderr=self.stderr, verbosity=int(options["verbosity"]))


def _load(name: str) -> Any:
    """The command object named ``name``, as ``manage.py`` would find it.

    :raises CommandError: EXIT_USAGE for an unknown name, or for ``leader_only`` itself.
    """
    try:
        app_name = get_commands()[name]
    except KeyError:
        raise CommandError(
            f"Unknown command: {name!r}. Type 'manage.py help' for usage.", returncode=EXIT_USAGE
        ) from None
    command = app_name if isinstance(app_name, BaseCommand) else load_command_class(app_name, name)
    if isinstance(command, Command):
        raise CommandError("leader_only cannot wrap leader_only", returncode=EXIT_USAGE)
    return command


def _default_key(wrapped: Any, name: str) -> str:
    if isinstance(wrapped, LeaderOnlyCommand) and wrapped.leader_key:
        return wrapped.leader_key
    return name


def _as_leader_options(options: dict[str, Any]) -> list[str]:
    extra: list[str] = []
    for ours, theirs in (
        ("key", "--leader-key"),
        ("ttl", "--leader-ttl"),
        ("check_ttl", "--leader-check-ttl"),
        ("wait", "--leader-wait"),
    ):
        if options[ours] is not None:
            extra += [theirs, str(options[ours])]
    if options["fail_if_held"]:
        extra.append("--leader-fail-if-held")
    if options["no_leader"]:
        extra.append("--no-leader")
    return extra


def _run(
    wrapped: Any, name: str, rest: list[str], prog_name: str, from_command_line: bool, streams: dict[str, Any]
) -> Callable[[], None]:
    """Parse ``rest`` with the wrapped command's parser now; return what runs it later.

    :raises SystemExit: from the command line, on a usage error (2) or ``--help`` (0), as Django does.
    :raises CommandError: from ``call_command``, on a usage error.
    """
    if from_command_line:
        wrapped._called_from_command_line = True  # usage errors exit 2 with argparse's message
        wrapped.create_parser(prog_name, name).parse_args(rest)

        def run() -> None:
            wrapped.run_from_argv([prog_name, name, *rest])

        return run
    wrapped.create_parser("", name).parse_args(rest)

    def call() -> None:
        call_command(wrapped, *rest, **streams)

    return call
