"""Append one line per event to a log shared by several processes (O_APPEND writes of a short line are atomic).

Django skips command modules whose name starts with "_": this one is only imported by the commands.
"""

from __future__ import annotations

import os
import time


def log(path: str, kind: str, detail: object = "") -> None:
    """``<wall time> <pid> <kind> <detail>``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {kind} {detail}\n".encode())
    finally:
        os.close(fd)
