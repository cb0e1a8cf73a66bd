#!/usr/bin/env python
"""The test project's manage.py, as ``django-admin startproject`` writes it."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line  # type: ignore[import-untyped, unused-ignore]

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
