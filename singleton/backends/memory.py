"""An in-process backend with Consul's semantics and an injectable clock.

It is the reference implementation of the backend contract and the double that unit tests drive
without sleeping: pass a fake monotonic clock, advance it, and sessions expire and lock-delays end as
they would on Consul. Several electors sharing one :class:`MemoryBackend` behave like several processes
sharing one Consul cluster.

Extra controls for tests: :attr:`MemoryBackend.down` makes every call fail with
:class:`~singleton.errors.BackendUnavailable` (an outage); :meth:`delete` (of the contract) and
:meth:`invalidate_session` do what an operator would with ``consul kv delete`` or
``consul session destroy``; :meth:`replay_lock_delay` does what restarted servers do with an old
invalidation; :attr:`calls` counts the calls by method name.

Sessions expire lazily, when any call looks at the store after ``expiry_factor * ttl`` has passed
since their last renewal; ``expiry_factor`` is 1 (the earliest Consul may expire them) by default and
may be raised up to 2 (the latest).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.errors import BackendUnavailable, CheckNotFound, SessionInvalidated

__all__ = ["MemoryBackend"]


@dataclass
class _Session:
    info: SessionInfo
    expires_at: float
    checks: tuple[str, ...] = ()


@dataclass
class _Check:
    service_id: str
    ttl: float
    critical_at: float


class MemoryBackend(Backend):
    """Consul's sessions and KV locks, in memory. Thread-safe."""

    name = "memory"
    supports_checks = True

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, expiry_factor: float = 1.0) -> None:
        if not 1.0 <= expiry_factor <= 2.0:
            raise ValueError(f"expiry_factor must be between 1 and 2 (Consul's bounds), got {expiry_factor}")
        self.clock = clock
        self.expiry_factor = expiry_factor
        #: While True every call raises BackendUnavailable, as if the agent were down.
        self.down = False
        self.calls: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._index = 1
        self._sessions: dict[str, _Session] = {}
        self._keys: dict[str, KeyInfo] = {}
        self._tombstones: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self._checks: dict[str, _Check] = {}

    # -- bookkeeping (called with the condition held) -------------------------------------------

    def _enter(self, method: str) -> float:
        self.calls[method] += 1
        if self.down:
            raise BackendUnavailable(f"memory backend is down ({method})")
        now = self.clock()
        self._expire(now)
        return now

    def _bump(self) -> int:
        self._index += 1
        self._cond.notify_all()
        return self._index

    def _expire(self, now: float) -> None:
        critical = {cid for cid, check in self._checks.items() if check.critical_at <= now}
        for session_id in [sid for sid, s in self._sessions.items() if s.expires_at <= now or critical & set(s.checks)]:
            self._invalidate(session_id, now)

    def _invalidate(self, session_id: str, now: float) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        for key, entry in list(self._keys.items()):
            if entry.session == session_id:
                self._keys[key] = replace(entry, session=None, modify_index=self._bump())
                if session.info.lock_delay > 0:
                    self._delays[key] = now + session.info.lock_delay

    def _key_index(self, key: str) -> int:
        entry = self._keys.get(key)
        if entry is not None:
            return entry.modify_index
        return self._tombstones.get(key, self._index)

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionInvalidated(f"session {session_id} no longer exists")
        return session

    # -- the contract -----------------------------------------------------------------------------

    def create_session(self, *, name: str, ttl: float, lock_delay: float, checks: Sequence[str] = ()) -> str:
        with self._cond:
            now = self._enter("create_session")
            for check_id in checks:
                check = self._checks.get(check_id)
                if check is None or check.critical_at <= now:
                    raise CheckNotFound(f"check {check_id!r} is missing or critical")
            session_id = str(uuid.uuid4())
            info = SessionInfo(
                id=session_id, name=name, ttl=ttl, lock_delay=lock_delay, node="memory", create_index=self._bump()
            )
            self._sessions[session_id] = _Session(info, now + ttl * self.expiry_factor, tuple(checks))
            return session_id

    def register_check(self, check_id: str, *, service_id: str, name: str, ttl: float) -> None:
        with self._cond:
            now = self._enter("register_check")
            self._checks[check_id] = _Check(service_id, ttl, now + ttl)

    def pass_check(self, check_id: str) -> None:
        with self._cond:
            now = self._enter("pass_check")
            check = self._checks.get(check_id)
            if check is None:
                raise CheckNotFound(f"the memory agent does not hold the health check {check_id}")
            check.critical_at = now + check.ttl

    def deregister_check(self, service_id: str) -> None:
        with self._cond:
            now = self._enter("deregister_check")
            self.drop_checks(service_id, now=now)

    def renew_session(self, session_id: str) -> None:
        with self._cond:
            now = self._enter("renew_session")
            session = self._session(session_id)
            assert session.info.ttl is not None
            session.expires_at = now + session.info.ttl * self.expiry_factor

    def destroy_session(self, session_id: str) -> None:
        with self._cond:
            now = self._enter("destroy_session")
            self._invalidate(session_id, now)

    def session_info(self, session_id: str) -> SessionInfo | None:
        with self._cond:
            self._enter("session_info")
            session = self._sessions.get(session_id)
            return None if session is None else session.info

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        with self._cond:
            now = self._enter("acquire")
            self._session(session_id)
            entry = self._keys.get(key)
            # As Consul does: the lock-delay is judged first, whoever holds the key (even this session).
            if self._delays.get(key, 0.0) > now:
                return Acquisition(False, entry)
            self._delays.pop(key, None)
            if entry is not None and entry.session not in (None, session_id):
                return Acquisition(False, entry)
            index = self._bump()
            if entry is None:
                entry = KeyInfo(key, session_id, value, flags, index, index, 1)
            else:
                lock_index = entry.lock_index if entry.session == session_id else entry.lock_index + 1
                entry = replace(
                    entry, session=session_id, value=value, flags=flags, modify_index=index, lock_index=lock_index
                )
            self._keys[key] = entry
            return Acquisition(True, entry)

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        with self._cond:
            self._enter("release")
            entry = self._keys.get(key)
            if entry is None or entry.session != session_id:
                return False
            new_value = entry.value if value is None else value
            self._keys[key] = replace(entry, session=None, value=new_value, modify_index=self._bump())
            return True

    def put(self, key: str, value: bytes) -> None:
        with self._cond:
            self._enter("put")
            entry = self._keys.get(key)
            index = self._bump()
            if entry is None:
                self._keys[key] = KeyInfo(key, None, value, 0, index, index, 0)
            else:  # as Consul does for a plain write: the Session stays, the LockIndex goes back to 0
                self._keys[key] = replace(entry, value=value, flags=0, modify_index=index, lock_index=0)
            self._tombstones.pop(key, None)

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        """Delete the key, as ``consul kv delete`` would (no lock-delay follows)."""
        with self._cond:
            self._enter("delete")
            entry = self._keys.get(key)
            if cas is not None and entry is not None and entry.modify_index != cas:
                return False
            if entry is not None:
                del self._keys[key]
                self._tombstones[key] = self._bump()
            return True

    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        with self._cond:
            self._enter("read")
            return self._key_index(key), self._keys.get(key)

    def _block(self, method: str, index: int, wait: float, current: Callable[[], int]) -> int:
        """With the condition held: wait (real seconds) until ``current()`` passes ``index``; return it."""
        deadline = time.monotonic() + wait
        self._enter(method)
        while index and current() <= index and not self.down:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            self._expire(self.clock())
        if self.down:
            raise BackendUnavailable(f"memory backend is down ({method})")
        return current()

    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        """Blocks on a real-time condition (changes wake it at once); ``wait`` is in real seconds."""
        with self._cond:
            return self._block("watch", index, wait, lambda: self._key_index(key)), self._keys.get(key)

    def _prefix_index(self, prefix: str) -> int:
        indexes = [e.modify_index for k, e in self._keys.items() if k.startswith(prefix)]
        indexes += [i for k, i in self._tombstones.items() if k.startswith(prefix)]
        return max(indexes, default=1)

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        """Blocks on a real-time condition (changes wake it at once); ``wait`` is in real seconds."""
        with self._cond:
            new_index = self._block("watch_prefix", index, wait, lambda: self._prefix_index(prefix))
            return new_index, sorted((e for k, e in self._keys.items() if k.startswith(prefix)), key=lambda e: e.key)

    def list_keys(self, prefix: str) -> list[KeyInfo]:
        with self._cond:
            self._enter("list")
            return sorted((e for k, e in self._keys.items() if k.startswith(prefix)), key=lambda e: e.key)

    # -- operator and test controls ---------------------------------------------------------------

    def invalidate_session(self, session_id: str) -> None:
        """Invalidate the session as an operator's ``consul session destroy`` would (lock-delay applies)."""
        with self._cond:
            self._invalidate(session_id, self.clock())

    def drop_checks(self, service_id: str | None = None, *, now: float | None = None) -> None:
        """Forget the health checks (of ``service_id``, or all), as an agent restarted without them would:
        the sessions linked to them are invalidated."""
        with self._cond:
            dropped = {cid for cid, c in self._checks.items() if service_id is None or c.service_id == service_id}
            for check_id in dropped:
                del self._checks[check_id]
            now = self.clock() if now is None else now
            for session_id in [sid for sid, s in self._sessions.items() if dropped & set(s.checks)]:
                self._invalidate(session_id, now)

    def replay_lock_delay(self, key: str, seconds: float) -> None:
        """Put ``key`` inside a lock-delay of ``seconds`` from now, whoever holds it: what Consul servers
        restarted from their data do when they replay an old invalidation of the key's earlier holder."""
        with self._cond:
            self._delays[key] = self.clock() + seconds

    def set_down(self, down: bool) -> None:
        """Start or end an outage; ending it wakes blocked watches."""
        with self._cond:
            self.down = down
            self._cond.notify_all()

    def tick(self) -> None:
        """Apply expiries due at the clock's current time and wake watchers."""
        with self._cond:
            self._expire(self.clock())
            self._cond.notify_all()

    def sessions(self) -> list[SessionInfo]:
        with self._cond:
            return [s.info for s in self._sessions.values()]
