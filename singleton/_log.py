"""Rate-limited logging: an outage must not flood the host application's logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLogger"]


class RateLimitedLogger:
    """Logs each *topic* at most once per ``interval`` seconds, then says how many were suppressed."""

    def __init__(
        self, logger: logging.Logger, interval: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, topic: str, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
                return
            self._last[topic] = now
            suppressed = self._suppressed.pop(topic, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args)

    def reset(self, topic: str) -> None:
        """Forget ``topic``: its next message is logged at once (say, when an outage ends)."""
        with self._lock:
            self._last.pop(topic, None)
            self._suppressed.pop(topic, None)
