"""The ``singleton`` command line (also ``python -m singleton``), in the manner of ``consul lock``.

::

    singleton run --key reports/nightly -- ./nightly-report --full
    singleton run --key reports/nightly --no-wait -- ./nightly-report   # exit 0, silent, when held elsewhere
    singleton status reports/nightly                                    # exit 0 held, 1 free
    singleton status --json
    singleton pause reports/nightly --for 600 --reason migration        # no process runs it meanwhile
    singleton resume reports/nightly
    singleton step-down reports/nightly --for 60                        # move leadership off its holder

Consul is reached through the Consul CLI's environment variables (``CONSUL_HTTP_ADDR``,
``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_CACERT``, ...) read by
:meth:`Settings.from_env <singleton.config.Settings.from_env>`; ``--address``, ``--token`` and
``--token-file`` override them. Keys are relative to ``SINGLETON_KEY_PREFIX`` (or ``--key-prefix``).

The commands live in :mod:`singleton.cli._run`, :mod:`singleton.cli._status` and
:mod:`singleton.cli._controls` (pause, resume, step-down).

Exit codes
----------
=====  =====================================================================================
0..    ``run``: the command's own exit code (128 + N when signal N killed it)
0      ``status``: every key named is held (without keys: at least one key is held)
1      ``status``: a key named is free (without keys: none is held); ``step-down``: nobody holds the key
64     bad arguments or settings (EX_USAGE)
69     Consul unreachable, or an ACL denied a call (EX_UNAVAILABLE)
0      ``run --no-wait`` / ``--wait S``: another process holds the key, so it runs the command there
75     ``run --fail-if-held``: another process holds the key (or it is paused); ``--wait S``: not
       acquired in time for another reason (EX_TEMPFAIL); ``step-down``: the holder has not let go
       within ``--wait``
76     ``run``: the lock was lost (or the key paused, or a step-down asked) while the command ran;
       it was stopped
126    ``run``: the command could not be executed (permission denied, not executable)
127    ``run``: the command was not found
128+N  ``run``: signal N arrived while waiting for the lock; the command was not started
=====  =====================================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from singleton._text import one_line
from singleton._version import __version__
from singleton.cli._common import (
    ENVIRONMENT_HELP,
    EXIT_CANNOT_EXECUTE,
    EXIT_CODES_HELP,
    EXIT_FREE,
    EXIT_NOT_FOUND,
    Exit,
    Output,
    Parser,
    address_option,
    seconds_option,
)
from singleton.cli._controls import add_control_commands, cmd_pause, cmd_resume, cmd_step_down
from singleton.cli._run import DEFAULT_KILL_GRACE, KILL_SAFETY, KillPlan, cmd_run, kill_deadline
from singleton.cli._status import cmd_status
from singleton.config import LOCK_DELAY_MAX
from singleton.errors import BackendError, ConfigurationError, SingletonError
from singleton.exitcodes import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_FREE",
    "EXIT_NOT_FOUND",
    "KILL_SAFETY",
    "KillPlan",
    "build_parser",
    "kill_deadline",
    "main",
]

_RUN_DESCRIPTION = """\
Run COMMAND only while this process holds the Consul lock KEY, like `consul lock`.

Waits for the lock (for ever unless --wait or --no-wait), then starts COMMAND in a session of its
own with SINGLETON_LOCK_KEY, SINGLETON_LOCK_FENCE and SINGLETON_LOCK_SESSION in its environment.
SIGINT, SIGTERM and SIGHUP are forwarded to it; ^Z stops it along with singleton. If the lock is
lost, COMMAND gets SIGTERM, then SIGKILL before any other process could take the lock (at once
when one may hold it already), and singleton exits 76; the same, SIGKILL after --kill-grace, when an
operator pauses the key or asks for a step-down (the lock stays held until COMMAND has exited). When COMMAND exits, the lock is released
and singleton exits with its code. The key's value, and the session's name, is hostname:pid of
this singleton process.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``singleton`` argument parser (exposed for documentation tools and tests)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="singleton",
        description="Run a command on exactly one process of a fleet: the holder of a Consul lock.",
        epilog=EXIT_CODES_HELP + "\n" + ENVIRONMENT_HELP,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"singleton {__version__}")

    common = Parser(add_help=False)
    consul = common.add_argument_group("Consul")
    consul.add_argument(
        "--address",
        type=address_option,
        metavar="HOST:PORT",
        help="the agent's HTTP API: host:port, [ipv6]:port or http(s)://host:port (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)",
    )
    consul.add_argument(
        "--token", metavar="TOKEN", help="ACL token (default: CONSUL_HTTP_TOKEN; visible to `ps`: prefer --token-file)"
    )
    consul.add_argument(
        "--token-file", metavar="FILE", help="file holding the ACL token (default: CONSUL_HTTP_TOKEN_FILE)"
    )
    consul.add_argument(
        "--timeout",
        type=seconds_option("--timeout", 0.1, 300),
        metavar="SECONDS",
        help="HTTP timeout of each call to Consul; blocking queries add their wait (default: 5)",
    )
    consul.add_argument(
        "--key-prefix", metavar="PREFIX", help="prefix of every key, as in 'myapp/' (default: SINGLETON_KEY_PREFIX)"
    )
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="say what happens (acquired, released, retries)")
    talk.add_argument("-q", "--quiet", action="store_true", help="print errors only")

    sub = parser.add_subparsers(dest="subcommand", metavar="{run,status,pause,resume,step-down}", parser_class=Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a command while holding a lock",
        description=_RUN_DESCRIPTION,
        epilog=EXIT_CODES_HELP + "\n" + ENVIRONMENT_HELP,
        formatter_class=formatter,
        usage="%(prog)s --key KEY [options] -- COMMAND [ARGS...]",
    )
    lock = run.add_argument_group("lock")
    lock.add_argument("--key", required=True, help="the Consul key to lock, as in 'reports/nightly'")
    lock.add_argument(
        "--ttl",
        type=seconds_option("--ttl", 10, 86400),
        metavar="SECONDS",
        help="session TTL, 10 to 86400 (default: SINGLETON_TTL, else 15); renewed every TTL/3",
    )
    lock.add_argument(
        "--lock-delay",
        type=seconds_option("--lock-delay", 0, LOCK_DELAY_MAX),
        metavar="SECONDS",
        help="after this process's session is invalidated nobody can take the key for this long; at least "
        "the local lease + 0.5 (8.5 for --ttl 10), at most 60 (default: SINGLETON_LOCK_DELAY, else 15, or the "
        "smallest safe one)",
    )
    lock.add_argument(
        "--check-ttl",
        type=seconds_option("--check-ttl", 1, 43200),
        metavar="SECONDS",
        help="fast failover: link the session to a health check of this process with this TTL (1 to TTL/2), "
        "so that a crashed singleton is replaced about SECONDS + lock-delay later (default: SINGLETON_CHECK_TTL, off)",
    )
    waiting = lock.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        type=seconds_option("--wait", 0, 366 * 86400),
        metavar="SECONDS",
        help="give up when the lock is not acquired within SECONDS (default: wait for ever): exit 0 when "
        "another process holds the key (75 with --fail-if-held), 75 otherwise",
    )
    waiting.add_argument(
        "--no-wait",
        action="store_true",
        help="give up at once when another process holds the key (Go's exitOnLockFound): exit 0, "
        "and print why only with -v, so that cron on every host mails nothing from the hosts that skip",
    )
    lock.add_argument(
        "--fail-if-held",
        action="store_true",
        help="exit 75 instead of 0 when another process holds the key (with --no-wait or --wait), and say so",
    )
    lock.add_argument(
        "--kill-grace",
        type=seconds_option("--kill-grace", 0, 3600),
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
        description="Show who holds each KEY (hostname:pid), since when, the session and the fencing index,\n"
        "and whether it is paused. Without KEY, every held or paused key under the key prefix.\n"
        "Exit 0 when every KEY is held, 1 when one is free.",
        epilog=EXIT_CODES_HELP + "\n" + ENVIRONMENT_HELP,
        formatter_class=formatter,
    )
    status.add_argument("keys", nargs="*", metavar="KEY", help="keys to show (default: every held key)")
    status.add_argument("--json", action="store_true", help="print a JSON list of objects, one per key")
    add_control_commands(sub, common, formatter, ENVIRONMENT_HELP)
    return parser


# -- entry point ------------------------------------------------------------------------------------

_CONTROLS = {"pause": cmd_pause, "resume": cmd_resume, "step-down": cmd_step_down}


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the ``singleton`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Never raises for bad arguments, bad settings or an unavailable Consul: each is one line on
    ``stderr`` and an exit code (see the module docstring).
    """
    out_stream = stdout if stdout is not None else sys.stdout
    err_stream = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    prog = "singleton"
    verbosity = 0
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        prog = f"singleton {args.subcommand}"
        verbosity = -1 if args.quiet else 1 if args.verbose else 0
        out = Output(prog, verbosity, err_stream)
        if args.subcommand == "run":
            return cmd_run(args, out)
        if args.subcommand in _CONTROLS:
            return _CONTROLS[args.subcommand](args, out, out_stream)
        return cmd_status(args, out_stream)
    except Exit as exc:
        if exc.message is not None and exc.shown(verbosity):
            prog = exc.prog or prog
            message = f"{prog}: error: {exc.message}" if exc.error else f"{prog}: {exc.message}"
            with contextlib.suppress(OSError, ValueError):
                print(one_line(message), file=err_stream, flush=True)
        return exc.code
    except ConfigurationError as exc:
        print(one_line(f"{prog}: error: {exc}"), file=err_stream, flush=True)
        return EXIT_USAGE
    except BackendError as exc:
        print(one_line(f"{prog}: error: {exc}"), file=err_stream, flush=True)
        return EXIT_UNAVAILABLE
    except SingletonError as exc:
        print(one_line(f"{prog}: error: {exc}"), file=err_stream, flush=True)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `singleton status | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from complaining at exit
        return EXIT_OK
