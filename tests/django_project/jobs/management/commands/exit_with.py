"""A plain command (not leader-only) with its own arguments, output and exit code: what leader_only wraps."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped, unused-ignore]

from singleton import current_token

from ._events import log


class Command(BaseCommand):  # type: ignore[misc, unused-ignore]
    help = "Print --message, then exit with CODE."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("code", type=int)
        parser.add_argument("--message", default="")
        parser.add_argument("--events")
        parser.add_argument("--show-token", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["events"]:
            log(options["events"], "ran", options["code"])
        if options["message"]:
            self.stdout.write(options["message"])
        if options["show_token"]:
            self.stdout.write(f"token fence {current_token().fence}")
        if options["code"]:
            raise CommandError(f"exiting with {options['code']}", returncode=options["code"])
