"""The backend contract (singleton/backends/base.py), one suite over the memory, file and Consul backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from singleton.backends.base import Backend
from singleton.backends.consul import ConsulBackend
from singleton.backends.file import FileBackend
from singleton.backends.memory import MemoryBackend
from singleton.config import ConsulSettings
from singleton.errors import SessionInvalidated


@dataclass
class Subject:
    backend: Backend
    prefix: str
    #: Consul and the memory backend keep a lock-delay after an invalidation; lock files need none.
    has_lock_delay: bool


@pytest.fixture(params=["memory", "file", "consul"])
def subject(request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str) -> Iterator[Subject]:
    backend: Backend
    if request.param == "memory":
        backend = MemoryBackend()
        has_lock_delay = True
    elif request.param == "file":
        backend = FileBackend(tmp_path / "locks")
        has_lock_delay = False
    else:
        settings: ConsulSettings = request.getfixturevalue("consul_settings")
        backend = ConsulBackend(settings)
        has_lock_delay = True
    yield Subject(backend, key_prefix, has_lock_delay)
    backend.close()


def test_sessions_are_created_read_and_destroyed(subject: Subject) -> None:
    backend = subject.backend
    session = backend.create_session(name="contract:1", ttl=10, lock_delay=0)
    info = backend.session_info(session)
    assert info is not None
    assert (info.id, info.name) == (session, "contract:1")
    backend.renew_session(session)
    backend.destroy_session(session)
    assert backend.session_info(session) is None
    with pytest.raises(SessionInvalidated):
        backend.renew_session(session)
    backend.destroy_session(session)  # destroying a missing session is fine


def test_acquire_free_key_then_refuse_others_and_accept_the_holder_again(subject: Subject) -> None:
    backend, key = subject.backend, subject.prefix + "a"
    first = backend.create_session(name="first", ttl=10, lock_delay=0)
    second = backend.create_session(name="second", ttl=10, lock_delay=0)
    won = backend.acquire(key, first, b"host:1", flags=42)
    assert won.acquired
    assert won.entry is not None
    assert (won.entry.key, won.entry.session, won.entry.holder, won.entry.flags) == (key, first, "host:1", 42)
    assert won.entry.lock_index == 1
    lost = backend.acquire(key, second, b"host:2")
    assert not lost.acquired
    assert lost.entry is not None
    assert lost.entry.session == first
    assert not lost.in_lock_delay
    again = backend.acquire(key, first, b"host:1")
    assert again.acquired
    assert again.entry is not None
    assert again.entry.lock_index == 1, "the same session acquiring again is not a new holder"
    assert again.entry.modify_index >= won.entry.modify_index


def test_release_frees_the_key_at_once_and_the_fence_grows(subject: Subject) -> None:
    backend, key = subject.backend, subject.prefix + "b"
    first = backend.create_session(name="first", ttl=10, lock_delay=15)
    second = backend.create_session(name="second", ttl=10, lock_delay=15)
    held = backend.acquire(key, first, b"host:1").entry
    assert held is not None
    assert not backend.release(key, second), "only the holder releases"
    assert backend.release(key, first, b"host:1")
    index, entry = backend.read(key)
    assert entry is not None
    assert entry.session is None
    assert entry.holder == "host:1", "the last holder stays readable"
    assert index >= entry.modify_index > held.modify_index
    taken = backend.acquire(key, second, b"host:2")
    assert taken.acquired, "no lock-delay after a release"
    assert taken.entry is not None
    assert taken.entry.lock_index == 2
    assert taken.entry.modify_index > entry.modify_index


def test_destroying_the_holder_frees_the_key_behind_its_lock_delay(subject: Subject) -> None:
    backend, key = subject.backend, subject.prefix + "c"
    first = backend.create_session(name="first", ttl=10, lock_delay=5)
    second = backend.create_session(name="second", ttl=10, lock_delay=5)
    assert backend.acquire(key, first, b"host:1").acquired
    backend.destroy_session(first)
    _, entry = backend.read(key)
    assert entry is not None
    assert entry.session is None
    attempt = backend.acquire(key, second, b"host:2")
    if subject.has_lock_delay:
        assert not attempt.acquired
        assert attempt.in_lock_delay
    else:
        assert attempt.acquired


def test_a_destroyed_session_cannot_acquire(subject: Subject) -> None:
    backend = subject.backend
    session = backend.create_session(name="gone", ttl=10, lock_delay=0)
    backend.destroy_session(session)
    with pytest.raises(SessionInvalidated):
        backend.acquire(subject.prefix + "d", session, b"host:1")


def test_read_of_a_missing_key(subject: Subject) -> None:
    index, entry = subject.backend.read(subject.prefix + "missing")
    assert entry is None
    assert index > 0


def test_watch_answers_at_once_from_zero_then_blocks_until_a_change(subject: Subject) -> None:
    backend, key = subject.backend, subject.prefix + "e"
    session = backend.create_session(name="w", ttl=10, lock_delay=0)
    assert backend.acquire(key, session, b"host:1").acquired
    index, entry = backend.watch(key, 0, 30)
    assert entry is not None
    assert entry.session == session
    threading.Timer(0.3, backend.release, args=(key, session)).start()
    started = time.monotonic()
    new_index, changed = backend.watch(key, index, 30)
    assert time.monotonic() - started < 10
    assert new_index > index
    assert changed is not None
    assert changed.session is None


def test_watch_returns_after_its_wait_when_nothing_changes(subject: Subject) -> None:
    backend, key = subject.backend, subject.prefix + "f"
    session = backend.create_session(name="w", ttl=10, lock_delay=0)
    assert backend.acquire(key, session, b"host:1").acquired
    index, _ = backend.read(key)
    started = time.monotonic()
    same, entry = backend.watch(key, index, 1)
    took = time.monotonic() - started
    assert 0.5 <= took < 5
    assert same == index
    assert entry is not None


def test_watch_prefix_and_list_keys(subject: Subject) -> None:
    backend, prefix = subject.backend, subject.prefix + "group/"
    session = backend.create_session(name="p", ttl=10, lock_delay=0)
    for name in ("x", "y"):
        assert backend.acquire(prefix + name, session, b"host:1").acquired
    assert [e.key for e in backend.list_keys(prefix)] == [prefix + "x", prefix + "y"]
    index, entries = backend.watch_prefix(prefix, 0, 30)
    assert [e.key for e in entries] == [prefix + "x", prefix + "y"]
    threading.Timer(0.3, backend.release, args=(prefix + "y", session)).start()
    new_index, entries = backend.watch_prefix(prefix, index, 30)
    assert new_index > index
    assert {e.key: e.session for e in entries} == {prefix + "x": session, prefix + "y": None}


def test_put_and_delete_plain_keys_move_the_prefix_watch(subject: Subject) -> None:
    """Control records: plain writes beside a lock, under a reserved suffix, seen by the prefix watch."""
    backend, prefix = subject.backend, subject.prefix + "ctl/"
    lock, record = prefix + "job", prefix + "job#pause"
    session = backend.create_session(name="c", ttl=10, lock_delay=0)
    assert backend.acquire(lock, session, b"host:1").acquired
    index, _ = backend.watch_prefix(prefix, 0, 30)
    threading.Timer(0.3, backend.put, args=(record, b'{"by": "ops"}')).start()
    put_index, entries = backend.watch_prefix(prefix, index, 30)
    assert put_index > index
    by_key = {e.key: e for e in entries}
    assert set(by_key) == {lock, record}, "the '#' of the suffix travels percent-encoded and comes back as it is"
    assert by_key[record].value == b'{"by": "ops"}'
    assert by_key[record].session is None
    assert by_key[lock].session == session, "a write beside the lock leaves the lock alone"
    _, written = backend.read(record)
    assert written is not None
    assert not backend.delete(record, cas=written.modify_index + 1000), "cas: only at the index given"
    threading.Timer(0.3, backend.delete, args=(record,), kwargs={"cas": written.modify_index}).start()
    deleted_index, entries = backend.watch_prefix(prefix, put_index, 30)
    assert deleted_index != put_index, "a deletion moves the prefix watch too"
    assert [e.key for e in entries] == [lock]
    assert backend.read(record)[1] is None
    assert backend.delete(record), "a missing key is gone already"
    assert backend.delete(record, cas=written.modify_index)
    backend.put(record, b"again")
    assert [e.key for e in backend.list_keys(prefix)] == [lock, record]


CRASHER = textwrap.dedent(
    """
    import sys, time
    from singleton.backends.file import FileBackend
    backend = FileBackend(sys.argv[1])
    session = backend.create_session(name="crasher", ttl=10, lock_delay=15)
    assert backend.acquire("jobs/crash", session, b"crasher:1").acquired
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_file_lock_of_a_crashed_process_is_free_at_once_and_the_index_moves(tmp_path: Path) -> None:
    directory = tmp_path / "locks"
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        backend = FileBackend(directory)
        mine = backend.create_session(name="survivor", ttl=10, lock_delay=15)
        held_index, held = backend.read("jobs/crash")
        assert held is not None
        assert held.session is not None
        assert not backend.acquire("jobs/crash", mine, b"survivor:2").acquired
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        dead_index, dead = backend.watch("jobs/crash", held_index, 5)
        assert dead_index > held_index, "a crash moves the index, so watchers wake"
        assert dead is not None
        assert dead.session is None
        taken = backend.acquire("jobs/crash", mine, b"survivor:2")
        assert taken.acquired, "a dead process's flock is gone: no TTL, no lock-delay"
        assert taken.entry is not None
        assert taken.entry.modify_index > dead_index
        backend.close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_file_backend_needs_an_absolute_directory() -> None:
    from singleton.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="absolute directory"):
        FileBackend("relative/dir")
    with pytest.raises(ConfigurationError, match=r"file:///absolute/directory"):
        FileBackend.from_url("file://host/dir")
