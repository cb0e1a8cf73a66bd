"""``singleton pause``, ``resume`` and ``step-down``: operators' controls, written as records beside the key.

Each writes (or deletes) a record at ``<key>#pause`` or ``<key>#step-down`` (``singleton._controls``): it
needs only KV write on the key's prefix, and every process campaigning for the key hears of it within a
round trip through the watch it already has.

* ``pause KEY [--for S] [--reason TEXT]``: every process skips the body; the holder's token fires and it
  keeps the key. Without ``--for`` until ``resume``; with it, the pause ends by itself (wall clock).
* ``resume KEY``: deletes the pause; the processes campaign again (the holder at once, with a new term).
* ``step-down KEY [--for S] [--wait S]``: asks the process holding the key to finish as on shutdown
  (token, ``shutdown_grace`` for running bodies, release) and to stay out for ``--for`` seconds, then
  waits up to ``--wait`` seconds for it to let go and names the new holder. Refused (exit 1) when
  nobody holds the key; exit 75 when the holder has not let go in time (the request stands).
"""

from __future__ import annotations

import argparse
import time
from typing import TextIO

from singleton._controls import (
    STEP_DOWN_DEFAULT,
    STEP_DOWN_MAX,
    TEXT_MAX,
    clear_pause,
    operator,
    request_step_down,
    write_pause,
)
from singleton._text import one_line
from singleton.backends import Backend, KeyInfo, create_backend
from singleton.cli._common import EXIT_FREE, Exit, Output, Parser, seconds_option, settings_from, unavailable
from singleton.errors import BackendError
from singleton.exitcodes import EXIT_HELD_ELSEWHERE, EXIT_OK, EXIT_USAGE

__all__ = ["add_control_commands", "cmd_pause", "cmd_resume", "cmd_step_down"]

#: The longest pause asked for with --for: a year (a longer one is a pause until resumed).
PAUSE_MAX = 366 * 86400.0
#: How long ``step-down`` waits by default for the holder to let go: its grace (5 s) and then some.
DEFAULT_WAIT = 30.0
#: Once the holder let go, how long to wait for another process to take the key, to name it.
_TAKEOVER_WAIT = 2.0

_CONTROL_EPILOG = """\
exit codes:
  0      done (pause, resume); the holder let go (step-down)
  1      step-down: nobody holds the key, so there is nothing to step down
  64     bad arguments or settings
  69     Consul unreachable, or an ACL denied a call (the token needs KV write on the key)
  75     step-down: the holder has not let go within --wait (the request stands)
"""


def add_control_commands(
    sub: argparse._SubParsersAction[Parser],
    common: Parser,
    formatter: type[argparse.HelpFormatter],
    environment_help: str,
) -> None:
    """Add ``pause``, ``resume`` and ``step-down`` to the ``singleton`` parser's subcommands."""
    epilog = _CONTROL_EPILOG + "\n" + environment_help
    pause = sub.add_parser(
        "pause",
        parents=[common],
        help="stop a key's job on every process until resumed",
        description="Pause KEY: no process of the fleet runs its job while the pause lasts, and the holder's\n"
        "stop token fires (it keeps the key, so nobody else starts meanwhile). `singleton status` shows it.",
        epilog=epilog,
        formatter_class=formatter,
    )
    pause.add_argument("key", metavar="KEY", help="the key, as in 'reports/nightly'")
    pause.add_argument(
        "--for",
        dest="seconds",
        type=seconds_option("--for", 1, PAUSE_MAX),
        metavar="SECONDS",
        help="end the pause by itself after SECONDS, 1 to 31622400 (default: until `singleton resume`)",
    )
    pause.add_argument(
        "--reason", metavar="TEXT", help=f"why, for status and the holders' logs (at most {TEXT_MAX} characters)"
    )

    resume = sub.add_parser(
        "resume",
        parents=[common],
        help="end a pause",
        description="Resume KEY after `singleton pause`: the processes campaign again at once.",
        epilog=epilog,
        formatter_class=formatter,
    )
    resume.add_argument("key", metavar="KEY", help="the key, as in 'reports/nightly'")

    step_down = sub.add_parser(
        "step-down",
        parents=[common],
        help="move a key's leadership off its holder",
        description="Ask the process holding KEY to step down: its stop token fires, running jobs get its\n"
        "shutdown grace, it releases the key and stays out of the campaign for --for seconds, so another\n"
        "process takes over. Waits for the holder to let go and names the new holder.",
        epilog=epilog,
        formatter_class=formatter,
    )
    step_down.add_argument("key", metavar="KEY", help="the key, as in 'reports/nightly'")
    step_down.add_argument(
        "--for",
        dest="seconds",
        type=seconds_option("--for", 1, STEP_DOWN_MAX),
        default=STEP_DOWN_DEFAULT,
        metavar="SECONDS",
        help=f"how long the holder stays out of the campaign, 1 to 86400 (default: {STEP_DOWN_DEFAULT:g})",
    )
    step_down.add_argument(
        "--wait",
        type=seconds_option("--wait", 0, 3600),
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for the holder to let go, 0 to 3600; 0 does not wait (default: {DEFAULT_WAIT:g})",
    )


def _say(out: Output, stdout: TextIO, message: str) -> None:
    """The outcome, on stdout (``-q`` silences it)."""
    if out.verbosity >= 0:
        print(one_line(message), file=stdout, flush=True)


def _backend_for(args: argparse.Namespace) -> tuple[Backend, str]:
    settings = settings_from(args)
    return create_backend(settings), settings.full_key(args.key)


def cmd_pause(args: argparse.Namespace, out: Output, stdout: TextIO) -> int:
    reason = args.reason.strip() if args.reason else None
    if reason is not None and len(reason) > TEXT_MAX:
        raise Exit(EXIT_USAGE, f"--reason must be at most {TEXT_MAX} characters, got {len(reason)}")
    backend, full_key = _backend_for(args)
    try:
        pause = write_pause(backend, full_key, seconds=args.seconds, reason=reason, by=operator())
    except BackendError as exc:
        raise unavailable(exc) from None
    finally:
        backend.close()
    hint = "" if args.seconds is not None else f"; `singleton resume {args.key}` ends it"
    _say(out, stdout, f"{args.key}: {pause.describe()}{hint}")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, out: Output, stdout: TextIO) -> int:
    backend, full_key = _backend_for(args)
    try:
        pause = clear_pause(backend, full_key)
    except BackendError as exc:
        raise unavailable(exc) from None
    finally:
        backend.close()
    if pause is None:
        _say(out, stdout, f"{args.key}: was not paused")
    elif not pause.in_force(time.time()):
        _say(out, stdout, f"{args.key}: was not paused (the pause had ended by itself)")
    else:
        _say(out, stdout, f"{args.key}: resumed (it was {pause.describe()})")
    return EXIT_OK


def cmd_step_down(args: argparse.Namespace, out: Output, stdout: TextIO) -> int:
    backend, full_key = _backend_for(args)
    try:
        index, entry = backend.read(full_key)
        if entry is None or entry.session is None:
            raise Exit(EXIT_FREE, f"{args.key!r} is not held by any process: there is nothing to step down")
        holder = entry.holder or f"session {entry.session}"
        request_step_down(backend, full_key, entry, seconds=args.seconds, by=operator())
        if not args.wait:
            _say(out, stdout, f"{args.key}: asked {holder} to step down (out for {args.seconds:g}s)")
            return EXIT_OK
        now = _let_go(backend, full_key, index, entry, args.wait)
    except BackendError as exc:
        raise unavailable(exc) from None
    finally:
        backend.close()
    if now is None:
        raise Exit(
            EXIT_HELD_ELSEWHERE,
            f"{holder} has not let go of {args.key!r} within {args.wait:g}s; the request stands (a running job "
            "may be slow to stop, or the holder runs a singleton without step-down)",
        )
    taken = f"now held by {now.holder or 'session ' + str(now.session)}" if now.session else "the key is free"
    _say(out, stdout, f"{args.key}: {holder} stepped down; {taken}")
    return EXIT_OK


def _let_go(backend: Backend, full_key: str, index: int, held: KeyInfo, wait: float) -> KeyInfo | None:
    """Block until the key is no longer held by ``held``'s session: its entry then (who took it, if anyone
    did within a moment); None if that did not happen within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    entry: KeyInfo | None = held
    while entry is not None and entry.session == held.session:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        index, entry = backend.watch(full_key, index, min(remaining, 10.0))
    if entry is None:
        return KeyInfo(full_key, None, None, 0, 0, 0, 0)  # deleted meanwhile: free
    takeover = time.monotonic() + _TAKEOVER_WAIT
    while entry is not None and entry.session is None and time.monotonic() < takeover:
        index, entry = backend.watch(full_key, index, max(0.05, takeover - time.monotonic()))
    return entry if entry is not None else KeyInfo(full_key, None, None, 0, 0, 0, 0)
