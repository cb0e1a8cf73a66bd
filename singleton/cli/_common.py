"""What the ``singleton`` commands share: exit codes, one-line messages, settings from the options.

A private module: the names are public only to the other modules of :mod:`singleton.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TextIO

from singleton._text import one_line
from singleton.config import Settings, check_range, parse_address
from singleton.election import ElectionStatus
from singleton.errors import AccessDenied, BackendUnavailable, ConfigurationError
from singleton.exitcodes import EXIT_UNAVAILABLE, EXIT_USAGE

#: ``status``: a key named is free (or, without keys, no key is held).
EXIT_FREE = 1
#: ``run``: the command exists but could not be executed (as a shell does).
EXIT_CANNOT_EXECUTE = 126
#: ``run``: the command was not found (as a shell does).
EXIT_NOT_FOUND = 127

EXIT_CODES_HELP = """\
exit codes:
  0..    run: the command's own exit code (128+N when signal N killed it)
  0      status: every key named is held (without keys: at least one is held)
  1      status: a key named is free (without keys: none is held); step-down: nobody holds the key
  64     bad arguments or settings
  69     Consul unreachable, or an ACL denied a call
  0      run --no-wait / --wait S: another process holds the key (it runs the command there)
  75     run --fail-if-held: another process holds the key (or it is paused); --wait S: the key was not
         acquired in time; step-down: the holder has not let go within --wait
  76     run: the lock was lost while the command ran; it was stopped
  126    run: the command could not be executed
  127    run: the command was not found
  128+N  run: signal N arrived while waiting for the lock (the command was not started)
"""

ENVIRONMENT_HELP = """\
environment:
  CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT,
  CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_SSL_VERIFY   as for the consul CLI
  SINGLETON_KEY_PREFIX, SINGLETON_TTL, SINGLETON_LOCK_DELAY, SINGLETON_MARGIN   our own defaults
"""

# -- errors and messages --------------------------------------------------------------------------


class Exit(Exception):
    """Ends the command with ``code`` after printing ``message`` (one line) on stderr.

    An ``error`` is always printed, as ``<prog>: error: <message>``; otherwise the message is an
    outcome (``<prog>: <message>``) that ``-q`` silences, or with ``detail`` one shown only with ``-v``.
    """

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        error: bool = True,
        detail: bool = False,
        prog: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error
        self.detail = detail
        self.prog = prog

    def shown(self, verbosity: int) -> bool:
        """Whether the message is printed at ``verbosity`` (-1 with ``-q``, 0 by default, 1 with ``-v``)."""
        if not self.message:
            return False
        if self.error:
            return True
        return verbosity > 0 if self.detail else verbosity >= 0


class Output:
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
            print(f"{self.prog}: {one_line(message)}", file=self.stream, flush=True)


class Gate(logging.Filter):
    """Holds back the engine's log records until opened (its first failures are reported as one line)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.open


class _OneLineFormatter(logging.Formatter):
    """Log records as one line each, escaped as :func:`one_line` does (they quote Consul's answers)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


@contextlib.contextmanager
def engine_logging(out: Output) -> Iterator[Gate]:
    """Route the ``singleton`` loggers to stderr for the duration of a command, behind a gate."""
    gate = Gate()
    handler = logging.StreamHandler(out.stream)
    handler.setFormatter(_OneLineFormatter(f"{out.prog}: %(message)s"))
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


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exits with EXIT_USAGE (64), not 2."""

    def error(self, message: str) -> NoReturn:
        raise Exit(EXIT_USAGE, f"{message} (see '{self.prog} --help')", prog=self.prog)


# argparse turns a ValueError of a type function into "invalid value"; Exit passes through it with
# the settings layer's own message, which names the option and the allowed range.


def seconds_option(name: str, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return check_range(name, text, low, high)
        except ConfigurationError as exc:
            raise Exit(EXIT_USAGE, str(exc)) from None

    return parse


def address_option(text: str) -> str:
    try:
        parse_address(text, "--address")
    except ConfigurationError as exc:
        raise Exit(EXIT_USAGE, str(exc)) from None
    return text


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
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


def unavailable(exc: BaseException) -> Exit:
    """Exit 69 with one line that says what to fix."""
    if isinstance(exc, AccessDenied):
        return Exit(EXIT_UNAVAILABLE, f"{exc}; set CONSUL_HTTP_TOKEN (or --token-file) to a token with that rule")
    if isinstance(exc, BackendUnavailable):
        return Exit(EXIT_UNAVAILABLE, f"cannot reach Consul: {exc}; check CONSUL_HTTP_ADDR (or --address)")
    return Exit(EXIT_UNAVAILABLE, f"Consul failed: {exc}")


def failing(status: ElectionStatus) -> str | None:
    """Why the latest session or acquisition attempt failed (the engine's words), or None when it did not."""
    if status.is_leader or status.error is None:
        return None
    return status.reason or str(status.error)


def attempt_failed(key: str, why: str) -> Exit:
    """Exit 69 for a failed attempt, as the engine worded it (an ACL denial names the rule needed)."""
    hint = "set CONSUL_HTTP_TOKEN (or --token-file)" if "ACL" in why else "check CONSUL_HTTP_ADDR (or --address)"
    return Exit(EXIT_UNAVAILABLE, f"cannot acquire {key!r}: {why}; {hint}")
