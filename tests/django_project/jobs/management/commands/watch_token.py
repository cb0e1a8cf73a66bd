"""A long leader-only command that works until its stop token fires, then raises or returns."""

from __future__ import annotations

from typing import Any

from singleton import current_token
from singleton.contrib.django import LeaderOnlyCommand

from ._events import log


class Command(LeaderOnlyCommand):
    help = "Log start, wait for the stop token (at most --max seconds), log stopped, then --then."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--events", required=True)
        parser.add_argument("--then", choices=["raise", "return"], default="raise")
        parser.add_argument("--max", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        token = current_token()
        log(options["events"], "start", token.fence)
        token.wait(options["max"])
        log(options["events"], "stopped", token.reason)
        if options["then"] == "raise":
            token.raise_if_stopped()
