"""Exit codes shared by the ``singleton`` command line and the Django commands.

They follow sysexits.h where one fits, so cron and systemd monitoring can tell them apart from a
command's own codes (a command run while holding the lock exits with its own code).
"""

from __future__ import annotations

__all__ = ["EXIT_HELD_ELSEWHERE", "EXIT_LEADERSHIP_LOST", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE"]

#: Ran (or, by default, skipped because another process holds the lock).
EXIT_OK = 0
#: Bad arguments or settings (EX_USAGE).
EXIT_USAGE = 64
#: Consul could not be reached or refused us (EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69
#: Another process holds the lock, and the caller asked for a distinct code (EX_TEMPFAIL: try later).
EXIT_HELD_ELSEWHERE = 75
#: The lock was lost, or an operator paused the key or asked for a step-down, while the command ran;
#: it was told to stop.
EXIT_LEADERSHIP_LOST = 76
