"""A leader-only command that holds its lock until a file appears (or its stop token fires)."""

from __future__ import annotations

import os
from typing import Any

from singleton import current_token
from singleton.contrib.django import LeaderOnlyCommand

from ._events import log


class Command(LeaderOnlyCommand):
    help = "Log start, wait for --release to exist (at most --max seconds), log end."

    def add_arguments(self, parser: Any) -> None:  # no super() call: the leader options come anyway
        parser.add_argument("--events", required=True)
        parser.add_argument("--release", help="a file whose existence ends the command")
        parser.add_argument("--max", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        token = current_token()
        log(options["events"], "start", token.fence)
        self.stdout.write(f"running with fence {token.fence}")
        waited = 0.0
        while options["release"] and not os.path.exists(options["release"]) and waited < options["max"]:
            if token.wait(0.05):
                break
            waited += 0.05
        log(options["events"], "end", token.fence)
