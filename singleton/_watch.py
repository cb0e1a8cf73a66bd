"""Key watching: a few blocking queries that tell the election thread when a campaigned-for key changes.

Every watch is a recursive blocking query on a *prefix* that covers some of the process's keys
(``GET /v1/kv/<prefix>?recurse&index=&wait=``); each answer is compared with the last one, and a
:class:`KeyChanged` is posted for each watched key whose entry changed. A blocking query holds an HTTP
connection, and Consul caps connections per client IP (``limits.http_max_conns_per_client``, 200 by
default), so a process watches through at most :data:`MOST_WATCHES` prefixes whatever the number of
its keys (:func:`watch_prefixes`): the key prefix when one is set, else the common prefix of each
group of keys, else the common prefix of them all, which may be the whole KV store (a key prefix is
then recommended, and said once in the log).

The keys watched include each key's control records (``<key>#pause``, ``<key>#step-down``: see
``singleton._controls``), which lie under every prefix that covers their key. A record is reported once
when first watched, then whenever it changes; a missing record is not "changed" by the index moving
(only a lock key's holder must hear of a deletion it may have missed).

A watch thread never spins: an error waits out :data:`singleton._retry.WATCH_ERROR`, and answers that
come back at once with nothing new (an index that went backwards, a server that does not block) wait
out :data:`singleton._retry.WATCH_QUICK`. It knows nothing of campaigns: it posts messages and reads
the set of keys to watch through a callable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from singleton import _retry
from singleton._stats import EngineStats
from singleton.backends.base import Backend, KeyInfo
from singleton.errors import BackendError

__all__ = ["MOST_WATCHES", "KeyChanged", "PrefixWatch", "WatchFailed", "WatchThread", "watch_prefixes"]

_log = logging.getLogger("singleton.watch")

#: The most blocking queries (HTTP connections) one process keeps open for its keys.
MOST_WATCHES = 4
#: An answer faster than this, with nothing new in it, counts as "at once".
QUICK_ANSWER = 0.05
_MISSING_RECORD = "missing"


@dataclass(frozen=True)
class KeyChanged:
    """A watched key changed: its entry now (None: it does not exist) at ``index``.

    ``reset``: the store's index went backwards (a restarted dev agent): forget older indexes.
    """

    full_key: str
    index: int
    entry: KeyInfo | None
    reset: bool = False
    #: The watch thread is making an acquisition attempt on this news itself (see WatchThread).
    attempting: bool = False


@dataclass(frozen=True)
class WatchFailed:
    """The blocking query covering ``full_key`` failed (the campaign keeps it as history)."""

    full_key: str
    error: BackendError


def _common_prefix(keys: Iterable[str]) -> str:
    """The longest string every key starts with (characters, not path segments: Consul's prefixes)."""
    ordered = sorted(keys)
    first, last = ordered[0], ordered[-1]
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def watch_prefixes(keys: Collection[str], key_prefix: str = "", most: int = MOST_WATCHES) -> list[str]:
    """The prefixes whose recursive watches cover every one of ``keys``: at most ``most`` of them.

    With a key prefix, that prefix. Otherwise the keys are grouped by their first segment (up to and
    with the first ``/``), each group watched through its common prefix; more than ``most`` groups are
    watched through the common prefix of all keys.
    """
    if key_prefix:
        return [key_prefix]
    if not keys:
        return []
    groups: dict[str, list[str]] = {}
    for key in keys:
        head, slash, _ = key.partition("/")
        groups.setdefault(head + slash, []).append(key)
    if len(groups) > most:
        return [_common_prefix(keys)]
    return sorted(_common_prefix(group) for group in groups.values())


class PrefixWatch:
    """One prefix's watch: the query, and the comparison of each answer with the last one."""

    def __init__(self, prefix: str, backend: Backend, keys: Callable[[], Collection[str]], wait: float) -> None:
        self.prefix = prefix
        self.backend = backend
        self._keys = keys
        self.wait = wait
        self._seen: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"<PrefixWatch {self.prefix!r}>"

    def watched(self) -> list[str]:
        return [key for key in self._keys() if key.startswith(self.prefix)]

    def poll(self, index: int) -> tuple[int, list[KeyChanged]]:
        """One query (blocking unless ``index`` is 0): the new index and the watched keys that changed.

        :raises BackendError: as :meth:`Backend.watch_prefix`.
        """
        new_index, entries = self.backend.watch_prefix(self.prefix, index, self.wait)
        reset = new_index < index
        by_key = {entry.key: entry for entry in entries}
        changes = []
        for key in self.watched():
            entry = by_key.get(key)
            # A missing key is "changed" whenever the index moved: it may have been created and deleted
            # between two answers, and a holder must hear of that deletion. (Not so a control record.)
            marker: object
            if entry is not None:
                marker = entry.modify_index
            else:
                marker = _MISSING_RECORD if "#" in key else ("missing", new_index)
            if reset or self._seen.get(key) != marker:
                self._seen[key] = marker
                changes.append(KeyChanged(key, entry.modify_index if entry is not None else new_index, entry, reset))
        return new_index, changes


class WatchThread(threading.Thread):
    """Runs one :class:`PrefixWatch` until ``stop`` (the elector's) or :meth:`retire` (a regrouping).

    Each change goes to ``react``, which posts it to the election thread, and may first send an
    acquisition attempt from this very thread (a key freed while its campaign watched): a follower's
    takeover then costs no hand-off between threads before the attempt.
    """

    def __init__(
        self,
        watch: PrefixWatch,
        post: Callable[[KeyChanged | WatchFailed], None],
        stop: threading.Event,
        rng: _retry.Random,
        stats: EngineStats | None = None,
        react: Callable[[KeyChanged], None] | None = None,
    ) -> None:
        super().__init__(name=f"singleton-watch[{watch.prefix}*]", daemon=True)
        self._stats = stats
        self.watch = watch
        self._post = post
        self._react = react or post
        self._stop_all = stop
        self._retired = threading.Event()
        self._errors = _retry.WATCH_ERROR.start(rng)
        self._quick = _retry.WATCH_QUICK.start(rng)

    def retire(self) -> None:
        """Stop after the query in flight returns (its keys are watched by another thread now)."""
        self._retired.set()

    def _pause(self, seconds: float) -> None:
        self._stop_all.wait(seconds)

    def stopping(self) -> bool:
        return self._stop_all.is_set() or self._retired.is_set()

    def run(self) -> None:
        index = 0
        streak = 0  # answers in a row that came back at once
        while not self.stopping():
            began = time.monotonic()
            try:
                new_index, changes = self.watch.poll(index)
            except BackendError as exc:
                if self.stopping():
                    break
                if self._stats is not None:
                    self._stats.count_error("watch", exc)
                for key in self.watch.watched():
                    if "#" not in key:  # the campaigns keep it; their records have no say in it
                        self._post(WatchFailed(key, exc))
                self._pause(self._errors.next())
                continue
            except Exception:  # never let a bug kill the watch silently
                _log.exception("unexpected error in %s", self.name)
                self._pause(1.0)
                continue
            self._errors.reset()
            if self.stopping():
                break
            for change in changes:
                self._react(change)
            if changes:
                time.sleep(0)  # let the election thread act on them before this thread sends its next query
            went_back = new_index < index
            blocking = index != 0  # a query with index 0 answers at once by design
            quick = blocking and time.monotonic() - began < QUICK_ANSWER
            if quick and (went_back or not changes or streak >= 3):
                # Answered at once with nothing new, or a key changing without pause: do not spin.
                self._pause(self._quick.next())
            elif blocking and not quick:
                self._quick.reset()  # it blocked as a blocking query should
            streak = streak + 1 if quick else 0
            index = 0 if went_back else max(new_index, 1)


class Watches:
    """Every watch of one elector: regrouped as keys come, polled inline in tests, threads otherwise.

    ``keys`` lists what to watch (the campaigned-for keys and their control records); ``post`` and
    ``react`` receive the news (see :class:`WatchThread`). With ``threads`` False nothing blocks:
    :meth:`poll` reads every prefix once (for tests on a fake clock).
    """

    def __init__(
        self,
        backend: Backend,
        keys: Callable[[], Collection[str]],
        *,
        key_prefix: str,
        wait: float,
        threads: bool,
        post: Callable[[KeyChanged | WatchFailed], None],
        react: Callable[[KeyChanged], None],
        stop: threading.Event,
        rng: _retry.Random,
        stats: EngineStats | None = None,
    ) -> None:
        self._backend = backend
        self._keys = keys
        self._key_prefix = key_prefix
        self._wait = wait
        self._threads_on = threads
        self._post = post
        self._react = react
        self._stop = stop
        self._rng = rng
        self._stats = stats
        self.watches: dict[str, PrefixWatch] = {}
        self.threads: dict[str, WatchThread] = {}
        self._warned_whole_store = False

    def regroup(self, keys: Collection[str]) -> None:
        """Watch every one of ``keys`` through at most a few prefixes (see :func:`watch_prefixes`)."""
        prefixes = watch_prefixes(keys, self._key_prefix)
        if prefixes == [""] and not self._warned_whole_store and self._threads_on:
            self._warned_whole_store = True
            _log.warning(
                "the %d keys of this process share no prefix: one blocking query watches the whole KV store; "
                "set a key prefix (SINGLETON_KEY_PREFIX) to watch only yours",
                len(keys),
            )
        for prefix in list(self.watches):
            if prefix not in prefixes:
                del self.watches[prefix]
                thread = self.threads.pop(prefix, None)
                if thread is not None:
                    thread.retire()
        for prefix in prefixes:
            if prefix in self.watches:
                continue
            watch = PrefixWatch(prefix, self._backend, self._keys, self._wait)
            self.watches[prefix] = watch
            if self._threads_on and not self._stop.is_set():
                thread = WatchThread(watch, self._post, self._stop, self._rng, self._stats, react=self._react)
                self.threads[prefix] = thread
                thread.start()

    def poll(self) -> None:
        """Inline mode: read every prefix once, at once, and post what changed."""
        for watch in list(self.watches.values()):
            try:
                _, changes = watch.poll(0)
            except BackendError as exc:
                if self._stats is not None:
                    self._stats.count_error("watch", exc)
                for key in watch.watched():
                    if "#" not in key:  # control records have no campaign of their own
                        self._post(WatchFailed(key, exc))
                continue
            for change in changes:
                self._post(change)
