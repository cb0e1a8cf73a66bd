"""One host, no Consul: locks are ``flock(2)`` locks on files in a directory.

Chosen explicitly, never as a fallback (a fleet that forgot to configure Consul must not get one
leader per host)::

    SINGLETON_BACKEND=file:///var/run/myapp     # or configure(backend="file:///var/run/myapp")

For each key the directory holds ``<quoted key>.lock``, whose ``flock`` *is* the lock, and
``<quoted key>.json``, written atomically by the holder, with the holder's value, session and indexes.
The kernel releases a dead process's ``flock`` at once, so:

* a crashed holder is replaced within one watch interval (50 ms), with no TTL to wait out: a dead
  process cannot run a job, so no lock-delay is needed either (``lock_delay`` is accepted and ignored);
* a live holder loses a key only by releasing it, resigning or shutting down; sessions never expire,
  renewals always succeed;
* indexes grow by two on every write, and a key whose recorded holder died reads one higher, so the
  index moves on a crash too and ``modify_index`` stays a fencing token across holders.

Plain entries (``put``, for control records such as ``<key>#pause``) are state files without a lock;
each write takes an index above every other in the directory, and a deletion leaves a tombstone with
one, so the prefix watches see both.

Followers learn of a release by looking at the lock file every 50 ms (a non-blocking shared-lock
probe and a read of the small JSON file): negligible work on one host, and no blocking query exists
for files. Lock files are never deleted: unlinking a held lock file would let a second process lock a
new file of the same name. Lock file descriptors are close-on-exec, and a forked child closes its
copies (``after_fork_in_child``), so a child never keeps its parent's locks alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.errors import BackendError, BackendUnavailable, ConfigurationError, SessionInvalidated

__all__ = ["FileBackend"]

#: How often a watch looks at the lock files.
POLL_INTERVAL = 0.05


@dataclass
class _Session:
    name: str
    ttl: float
    create_index: int
    fds: dict[str, int] = field(default_factory=dict)


class FileBackend(Backend):
    """Sessions and locks for the processes of one host, in ``directory``."""

    name = "file"
    lock_delays = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_absolute():
            raise ConfigurationError(f"the file backend needs an absolute directory, got {str(directory)!r}")
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._created = False

    @classmethod
    def from_url(cls, url: str) -> FileBackend:
        """``file:///var/run/myapp`` -> the directory ``/var/run/myapp``."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigurationError(f"backend must look like file:///absolute/directory, got {url!r}")
        return cls(urllib.parse.unquote(parts.path))

    @property
    def description(self) -> str:
        return f"lock files in {self.directory}"

    # -- files ------------------------------------------------------------------------------------

    def _ensure_directory(self) -> None:
        if self._created:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create the lock directory {self.directory}: {exc.strerror}") from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise BackendUnavailable(f"the lock directory {self.directory} is not writable by this process")
        self._created = True

    def _paths(self, key: str) -> tuple[Path, Path]:
        name = urllib.parse.quote(key, safe="")
        return self.directory / f"{name}.lock", self.directory / f"{name}.json"

    def _read_state(self, key: str) -> dict[str, Any] | None:
        _, state_path = self._paths(key)
        try:
            with open(state_path, encoding="utf-8") as handle:
                state: dict[str, Any] = json.load(handle)
                return state
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot read {state_path}: {exc}") from exc

    def _write_state(self, key: str, state: dict[str, Any]) -> None:
        _, state_path = self._paths(key)
        try:
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".state-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            os.chmod(temp, 0o644)
            os.replace(temp, state_path)
        except OSError as exc:
            raise BackendUnavailable(f"cannot write {state_path}: {exc.strerror}") from exc

    def _locked_by_someone(self, key: str) -> bool:
        """Whether any open file description holds the key's flock (a non-blocking shared-lock probe)."""
        lock_path, _ = self._paths(key)
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BackendUnavailable(f"cannot open {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's shared lock, if it got one
        return False

    def _entry(self, key: str) -> tuple[int, KeyInfo | None]:
        state = self._read_state(key)
        if state is None:
            return 1, None
        index = int(state["modify_index"])
        if state.get("deleted"):
            return index, None
        session = state.get("session")
        if session and not self._locked_by_someone(key):
            # The recorded holder died without releasing: the kernel freed its lock.
            session, index = None, index + 1
        entry = KeyInfo(
            key=key,
            session=session or None,
            value=state["value"].encode() if state.get("value") is not None else None,
            flags=int(state.get("flags", 0)),
            create_index=int(state.get("create_index", 0)),
            modify_index=index,
            lock_index=int(state.get("lock_index", 0)),
        )
        return index, entry

    # -- the contract -----------------------------------------------------------------------------

    def create_session(self, *, name: str, ttl: float, lock_delay: float, checks: Sequence[str] = ()) -> str:
        self._ensure_directory()
        session_id = str(uuid.uuid4())
        with self._lock:
            self._sessions[session_id] = _Session(name=name, ttl=ttl, create_index=0)
        return session_id

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionInvalidated(f"session {session_id} no longer exists")
        return session

    def renew_session(self, session_id: str) -> None:
        with self._lock:
            self._session(session_id)

    def destroy_session(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return
            for key in list(session.fds):
                with contextlib.suppress(BackendError):
                    self.release(key, session_id)
            self._sessions.pop(session_id, None)

    def session_info(self, session_id: str) -> SessionInfo | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                return SessionInfo(
                    session_id, session.name, session.ttl, 0.0, socket.gethostname(), session.create_index
                )
        # Another process's session: what its keys recorded about it.
        for entry_state in self._states():
            if entry_state.get("session") == session_id:
                return SessionInfo(
                    session_id, str(entry_state.get("session_name", "")), None, 0.0, socket.gethostname(), 0
                )
        return None

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        self._ensure_directory()
        with self._lock:
            session = self._session(session_id)
            fd = session.fds.get(key)
            fresh = fd is None
            if fd is None:
                fd = self._lock_file(key)
                if fd is None:
                    return Acquisition(False, self._entry(key)[1])
            try:
                previous = self._read_state(key) or {}
                index = int(previous.get("modify_index", 0))
                index += 2 - index % 2  # the next even index, above a dead holder's odd one
                same_holder = not fresh and previous.get("session") == session_id
                state = {
                    "key": key,
                    "session": session_id,
                    "session_name": session.name,
                    "value": value.decode("utf-8", "replace"),
                    "flags": flags,
                    "pid": os.getpid(),
                    "create_index": int(previous.get("create_index", index)),
                    "modify_index": index,
                    "lock_index": int(previous.get("lock_index", 0)) + (0 if same_holder else 1),
                }
                self._write_state(key, state)
            except BackendError:
                if fresh:
                    os.close(fd)
                raise
            session.fds[key] = fd
            return Acquisition(True, self._entry(key)[1])

    def _lock_file(self, key: str) -> int | None:
        lock_path, _ = self._paths(key)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BackendUnavailable(f"cannot open {lock_path}: {exc.strerror}") from exc
        for attempt in range(5):  # ride out another process's momentary shared-lock probe
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                time.sleep(0.001 * (attempt + 1))
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.ENOLCK:
                    raise BackendUnavailable(f"{lock_path}: the file system does not support locks") from exc
                raise BackendUnavailable(f"cannot lock {lock_path}: {exc.strerror}") from exc
        os.close(fd)
        return None

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        with self._lock:
            session = self._sessions.get(session_id)
            fd = session.fds.pop(key, None) if session is not None else None
            if fd is None:
                return False
            try:
                state = self._read_state(key) or {}
                state["session"] = None
                state["modify_index"] = int(state.get("modify_index", 0)) + 2
                if value is not None:
                    state["value"] = value.decode("utf-8", "replace")
                self._write_state(key, state)
            finally:
                os.close(fd)  # drops the flock: the key is free at once
            return True

    def _next_index(self) -> int:
        """An even index above every one in the directory: a plain write moves every prefix watch on it."""
        top = max((int(state.get("modify_index", 0)) for state in self._states()), default=0)
        return top + 2 - top % 2

    def put(self, key: str, value: bytes) -> None:
        self._ensure_directory()
        with self._lock:
            previous = self._read_state(key) or {}
            if previous.get("deleted"):
                previous = {}
            index = self._next_index()
            state = {
                "key": key,
                "session": previous.get("session"),  # as Consul does: a plain write keeps the Session
                "session_name": previous.get("session_name"),
                "value": value.decode("utf-8", "replace"),
                "flags": 0,
                "pid": previous.get("pid"),
                "create_index": int(previous.get("create_index", index)),
                "modify_index": index,
                "lock_index": 0,
            }
            self._write_state(key, state)

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        """Replace the key's state with a tombstone (its index moves prefix watches); the lock file stays."""
        with self._lock:
            current, entry = self._entry(key)
            if cas is not None and entry is not None and current != cas:
                return False
            if entry is not None:
                self._write_state(key, {"key": key, "deleted": True, "modify_index": self._next_index()})
            return True

    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        return self._entry(key)

    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        deadline = time.monotonic() + wait
        while True:
            current, entry = self._entry(key)
            if not index or current != index or time.monotonic() >= deadline:
                return current, entry
            time.sleep(POLL_INTERVAL)

    def _states(self) -> list[dict[str, Any]]:
        states = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendUnavailable(f"cannot list {self.directory}: {exc.strerror}") from exc
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                state = self._read_state(urllib.parse.unquote(name[: -len(".json")]))
                if state is not None:
                    states.append(state)
        return states

    def _scan(self, prefix: str) -> tuple[int, list[KeyInfo]]:
        """The highest index under ``prefix`` (deleted keys' tombstones included) and its entries."""
        entries = []
        top = 1
        for state in self._states():
            key = str(state["key"])
            if key.startswith(prefix):
                index, entry = self._entry(key)
                top = max(top, index)
                if entry is not None:
                    entries.append(entry)
        return top, sorted(entries, key=lambda e: e.key)

    def list_keys(self, prefix: str) -> list[KeyInfo]:
        return self._scan(prefix)[1]

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        deadline = time.monotonic() + wait
        while True:
            current, entries = self._scan(prefix)
            if not index or current != index or time.monotonic() >= deadline:
                return current, entries
            time.sleep(POLL_INTERVAL)

    def close(self) -> None:
        """Close every lock this process still holds (the kernel would at exit anyway)."""
        with self._lock:
            for session in self._sessions.values():
                for fd in session.fds.values():
                    with contextlib.suppress(OSError):
                        os.close(fd)
                session.fds.clear()
            self._sessions.clear()

    def after_fork_in_child(self) -> None:
        """In a forked child: close the inherited lock descriptors without unlocking the parent's locks."""
        for session in self._sessions.values():
            for fd in session.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's descriptor keeps the flock
            session.fds.clear()
        self._sessions.clear()
        self._lock = threading.RLock()
