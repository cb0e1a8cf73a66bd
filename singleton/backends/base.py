"""The backend contract: sessions with a TTL, and keys locked by a session.

The election engine (``singleton.election``) speaks only to this contract. Its semantics are Consul's,
and every backend keeps them:

* a session lives while it is renewed within its TTL; the backend may take up to twice the TTL to
  invalidate it once renewals stop, never less than the TTL;
* a key is acquired by one session at a time; the same session acquiring again succeeds;
* when a session is invalidated or destroyed while it holds keys, those keys are freed but cannot be
  acquired by anyone for the session's lock-delay; a key released explicitly first has no lock-delay;
  the lock-delay is judged before the holder, so inside one even the holding session's own acquire is
  refused (Consul servers restarted from their data replay old invalidations, with their delays
  counted from the restart);
* every change of a key raises its ``modify_index``; an acquisition by a new session raises
  ``lock_index``; both only grow, so ``modify_index`` read right after an acquisition is a fencing token;
* ``watch`` returns when the key's index moves past the one given, or after ``wait`` seconds.

Methods may be called from several threads at once (the election thread and the watch threads).
They raise only :class:`~singleton.errors.BackendError` subclasses:
:class:`~singleton.errors.BackendUnavailable` when the service cannot answer now (try again later),
:class:`~singleton.errors.AccessDenied` when an ACL forbids the call (retrying will not help),
:class:`~singleton.errors.SessionInvalidated` when the session given no longer exists,
:class:`~singleton.errors.CheckNotFound` when a health check of ours is not where it was registered.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Acquisition", "Backend", "KeyInfo", "SessionInfo"]

_B = TypeVar("_B", bound="Backend")


@dataclass(frozen=True)
class KeyInfo:
    """A key as the backend stores it."""

    key: str
    #: ID of the session holding the lock, or None when the key is free.
    session: str | None
    value: bytes | None
    #: Set by this library to the holder's acquisition time, in milliseconds since the epoch.
    flags: int
    create_index: int
    modify_index: int
    lock_index: int

    @property
    def holder(self) -> str | None:
        """The value as text: ``hostname:pid`` of the holder (or of the last holder, once released)."""
        if self.value is None:
            return None
        return self.value.decode("utf-8", "replace")


@dataclass(frozen=True)
class SessionInfo:
    id: str
    name: str
    #: Seconds, or None for a session without TTL.
    ttl: float | None
    lock_delay: float
    node: str | None
    create_index: int


@dataclass(frozen=True)
class Acquisition:
    """The outcome of :meth:`Backend.acquire`."""

    acquired: bool
    #: The key as read right after the attempt (None when it does not exist). After a success its
    #: ``modify_index`` is the fencing token; after a failure its ``session`` tells who holds it: no
    #: session means the key is free but inside a lock-delay, and the caller's own session means a
    #: lock-delay too (see the module docstring).
    entry: KeyInfo | None

    @property
    def in_lock_delay(self) -> bool:
        """Refused although the key is free (so: inside a lock-delay). See also ``entry.session``."""
        return not self.acquired and (self.entry is None or self.entry.session is None)


class Backend(abc.ABC):
    """Sessions and session-held keys. See the module docstring for the semantics every backend keeps."""

    #: Short name for logs and status output ("consul", "memory", "file").
    name: str = "backend"
    #: Whether an invalidated session leaves its keys inside a lock-delay. Where it does not, a failed
    #: attempt on a free key is a momentary race, retried at once rather than after a lock-delay.
    lock_delays: bool = True

    @property
    def description(self) -> str:
        """Where this backend points, for messages (never includes a secret)."""
        return self.name

    #: Whether a session can be linked to a health check of this process (fast failover, ``check_ttl``):
    #: :meth:`register_check`, :meth:`pass_check`, :meth:`deregister_check` and ``checks=``. Where it
    #: cannot, ``check_ttl`` is ignored (a lock file is freed at once when its process dies anyway).
    supports_checks: bool = False

    @abc.abstractmethod
    def create_session(self, *, name: str, ttl: float, lock_delay: float, checks: Sequence[str] = ()) -> str:
        """Create a session and return its ID. Its TTL starts when the backend receives the call.

        ``checks``: health checks (IDs from :meth:`register_check`) the session depends on: when one goes
        critical or is deregistered, the session is invalidated at once (with its lock-delay).

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not create sessions
        :raises CheckNotFound: a check named is unknown, or critical already
        """

    @abc.abstractmethod
    def renew_session(self, session_id: str) -> None:
        """Reset the session's TTL.

        :raises SessionInvalidated: the session no longer exists (expired or destroyed)
        :raises BackendUnavailable: the service cannot answer now; the session may still be alive
        :raises AccessDenied: the ACL token may not renew it
        """

    @abc.abstractmethod
    def destroy_session(self, session_id: str) -> None:
        """Destroy the session. Keys it still holds are freed *with* its lock-delay. A missing session is fine.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not destroy it
        """

    @abc.abstractmethod
    def session_info(self, session_id: str) -> SessionInfo | None:
        """The session, or None when it does not exist.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not read sessions
        """

    @abc.abstractmethod
    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        """Try to lock ``key`` for the session, writing ``value`` and ``flags`` when it succeeds.

        Never waits for the lock: a key held by another session, or inside a lock-delay, is a failed
        :class:`Acquisition`, not an error.

        :raises SessionInvalidated: the session no longer exists
        :raises BackendUnavailable: the service cannot answer now (the attempt may or may not have landed)
        :raises AccessDenied: the ACL token may not write the key
        """

    @abc.abstractmethod
    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        """Unlock ``key`` if the session holds it (no lock-delay follows). Returns whether it did.

        ``value``, when given, is written with the release (the last holder stays readable).

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not write the key
        """

    @abc.abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Write ``key`` as a plain entry (no session, flags 0), creating it or replacing its value.

        For the engine's control records (``<key>#pause``...), never for a key that is locked.

        :raises BackendUnavailable: the service cannot answer now (the write may or may not have landed)
        :raises AccessDenied: the ACL token may not write the key
        """

    @abc.abstractmethod
    def delete(self, key: str, *, cas: int | None = None) -> bool:
        """Delete ``key`` (no lock-delay follows). Returns whether the key is gone.

        With ``cas``, only while the key's ``modify_index`` is still ``cas``: False when it was written
        since. A missing key is gone already: True, as Consul answers.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not write the key
        """

    @abc.abstractmethod
    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        """``(index, entry)`` of the key now; entry is None when the key does not exist.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not read the key
        """

    @abc.abstractmethod
    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        """Like :meth:`read`, but blocks until the key's index passes ``index`` or ``wait`` seconds pass.

        ``index=0`` answers at once. An index lower than the one given means the store was reset (a
        restarted dev agent): start again from 0.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not read the key
        """

    @abc.abstractmethod
    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        """Every key under ``prefix``, blocking like :meth:`watch` until any of them changes.

        The index is the highest of the prefix (a key deleted under it raises it too).

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not read the prefix
        """

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> list[KeyInfo]:
        """Every key under ``prefix`` ('' for all), sorted by key.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not read them
        """

    def register_check(self, check_id: str, *, service_id: str, name: str, ttl: float) -> None:
        """Register a service of this process with a TTL health check ``check_id``, passing from now.

        The service is reaped by the backend once its check has been critical for a while (so a crashed
        process leaves nothing behind). Only where :attr:`supports_checks`.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not register services
        """
        raise NotImplementedError(f"the {self.name} backend has no health checks")

    def pass_check(self, check_id: str) -> None:
        """Mark the check passing: its TTL starts again when the backend receives the call.

        :raises CheckNotFound: the agent does not hold the check (restarted without it, or another agent)
        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not update the check
        """
        raise NotImplementedError(f"the {self.name} backend has no health checks")

    def deregister_check(self, service_id: str) -> None:
        """Deregister the service of :meth:`register_check` and its check (sessions linked to it end).

        A missing service is fine.

        :raises BackendUnavailable: the service cannot answer now
        :raises AccessDenied: the ACL token may not deregister it
        """
        raise NotImplementedError(f"the {self.name} backend has no health checks")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release network resources. The backend is not used afterwards."""

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def after_fork_in_child(self) -> None:  # noqa: B027 - optional hook
        """Called in a forked child on the parent's backend, which the child never uses again:
        drop whatever would keep the parent's locks alive (the file backend closes its lock files)."""
