"""Binding a key to an elector on first use: what ``@leader_only`` and the APScheduler store share.

An :class:`Attachment` registers its key with the process-wide elector (or the one it was given) the
first time it is needed, and again in a forked child (which forgets the parent's elector) and after
:func:`singleton.shutdown` and :func:`singleton.configure`. Its :attr:`Attachment.campaign` is what the
call path reads, with no lock and no call.

A configuration error (a bad ``SINGLETON_*``/``CONSUL_*`` variable, a lease that does not fit the process
settings) is loud: it is raised from every :meth:`Attachment.get` until it is fixed, logged once per
distinct message, and kept in :attr:`Attachment.error` for status. Being shut down is not an error: the
key then simply does not run here.
"""

from __future__ import annotations

import logging
import threading

from singleton import _runtime
from singleton._campaign import Campaign
from singleton.config import LeaseOverrides
from singleton.election import Election, Elector
from singleton.errors import ConfigurationError, SingletonError

__all__ = ["Attachment"]

_log = logging.getLogger("singleton")


class Attachment:
    """``key``'s election in ``elector`` (None: the process-wide one), bound on first use."""

    __slots__ = (
        "__weakref__",
        "_elector",
        "_lock",
        "_singleton_fork_callback",
        "campaign",
        "election",
        "error",
        "key",
        "overrides",
        "owner",
        "unavailable",
    )

    def __init__(self, key: str, overrides: LeaseOverrides, elector: Elector | None, *, owner: str) -> None:
        self.key = key
        self.overrides = overrides
        self.owner = owner
        self._elector = elector
        self._lock = threading.Lock()
        #: The bound election, or None before the first use (and after a fork).
        self.election: Election | None = None
        #: The bound election's campaign: the call path's one read.
        self.campaign: Campaign | None = None
        #: The configuration error of the latest attempt to bind, raised again by every get().
        self.error: ConfigurationError | None = None
        #: Why this process cannot campaign (shut down), when that is the case.
        self.unavailable: str | None = None
        _runtime.on_fork(self, self._forget)

    def __repr__(self) -> str:
        return f"<Attachment {self.owner} key={self.key!r}>"

    @property
    def elector(self) -> Elector | None:
        """The elector given at construction (None: the process-wide one)."""
        return self._elector

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self.election = None
        self.campaign = None

    def get(self) -> Election | None:
        """The election, registering the key on first use; None once this process cannot campaign.

        :raises ConfigurationError: a bad setting, or the key's lease settings do not fit.
        """
        with self._lock:
            election = self.election
            if election is not None and not election.elector.closed:
                return election
            try:
                elector = self._elector if self._elector is not None else _runtime.get_elector()
                if elector.closed:
                    self.unavailable = "the elector given to it is closed"
                    return None
                election = elector.register(self.key, overrides=self.overrides)
            except ConfigurationError as exc:
                if self.error is None or str(self.error) != str(exc):
                    _log.error("%s cannot campaign for %r: %s", self.owner, self.key, exc)
                self.error = exc
                raise
            except SingletonError as exc:
                self.unavailable = str(exc)
                return None
            self.error = None
            self.unavailable = None
            self.election = election
            self.campaign = election._campaign
            return election
