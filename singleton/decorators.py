"""``@leader_only``: run a function's body only in the process that holds its key's lock.

::

    @leader_only(key="reports/nightly", ttl=15)
    def nightly(stop_token: StopToken | None = None) -> int:
        for batch in batches():
            if stop_token.wait(0):        # or current_token().raise_if_stopped()
                break
            ...

On the holder the body runs and its result is returned. Elsewhere the body does not run and the call
returns ``default`` (None unless given), or raises :class:`~singleton.errors.NotLeader` with
``on_follower="raise"``. A bare ``@leader_only`` uses ``module.qualname`` as the key.

The call path reads state that the election thread keeps: no network round trip. Only the *first*
call of a function registers its key and waits for the first acquisition attempt (bounded by
``startup_timeout``; about one round trip when Consul is up), so on a fresh fleet the first call runs on
exactly one process rather than on none. To campaign before the first call, use
``fn.election.start()``.

Where it goes: on a plain function, a method, or an ``async def`` (which stays a coroutine function).
With ``@classmethod`` or ``@staticmethod`` put ``@leader_only`` *below* them (closest to ``def``);
above them works too. Decorated module-level functions stay picklable (by reference), so they can be
sent to a ProcessPoolExecutor; the child campaigns with its own session.

Nothing about Consul ever raises from a decorated call: a process that cannot prove it holds the key
(Consul down, session lost, not yet elected) simply does not run the body, and
``fn.election.status()`` says why.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, NoReturn, ParamSpec, Protocol, TypeVar, overload

if TYPE_CHECKING:  # typing.Self is 3.11+; the type checker always has typing_extensions
    from typing_extensions import Self

from singleton._attach import Attachment
from singleton.config import LeaseOverrides, check_range, validate_key
from singleton.election import Election, ElectionStatus, Elector, Role
from singleton.errors import ConfigurationError, NotLeader, SingletonError
from singleton.token import _CURRENT, StopToken

__all__ = ["LeaderOnlyBound", "LeaderOnlyFunction", "LeaderOnlyHandle", "leader_only"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
D = TypeVar("D")
D_co = TypeVar("D_co", covariant=True)
P2 = ParamSpec("P2")
R2 = TypeVar("R2")

_STOP_TOKEN = "stop_token"

# Lease settings given explicitly per key, to refuse contradicting decorations at decoration time.
_declared: dict[str, tuple[str, LeaseOverrides]] = {}
_declared_lock = threading.Lock()


def _declare(key: str, name: str, lease: LeaseOverrides) -> None:
    with _declared_lock:
        previous = _declared.setdefault(key, (name, lease))
    if previous[1] != lease and previous[0] != name:
        old, new = previous[1], lease
        raise ConfigurationError(
            f"key {key!r} is already used by {previous[0]} with ttl={old.ttl}, lock_delay={old.lock_delay}, "
            f"margin={old.margin}; {name} asks for ttl={new.ttl}, lock_delay={new.lock_delay}, "
            f"margin={new.margin}: one key has one lease setting"
        )


class LeaderOnlyHandle:
    """``fn.election``: the decorated function's view of its key's election.

    Reads never touch the network. The handle binds to the process-wide elector (or the one given to
    the decorator) on first use, and again in a forked child or after a shutdown and re-configure.
    """

    def __init__(
        self,
        name: str,
        key: str,
        *,
        overrides: LeaseOverrides,
        startup_timeout: float | None,
        elector: Elector | None,
    ) -> None:
        self.name = name
        self.key = key
        self.overrides = overrides
        self.startup_timeout = startup_timeout
        self._attachment = Attachment(key, overrides, elector, owner=name)
        #: How many calls did not run their body (see last_skip_reason for why).
        self.skipped = 0
        self._last_skipped: Election | None = None

    def __repr__(self) -> str:
        return f"<LeaderOnlyHandle {self.name} key={self.key!r}>"

    @property
    def ttl(self) -> float | None:
        return self.overrides.ttl

    @property
    def lock_delay(self) -> float | None:
        return self.overrides.lock_delay

    @property
    def margin(self) -> float | None:
        return self.overrides.margin

    def _attach(self, wait: bool = True) -> Election | None:
        """The election of this key, registering it on first use; None once singleton is shut down.

        :raises ConfigurationError: a bad setting (loud: raised from every call until fixed).
        """
        election = self._attachment.get()
        if election is None:
            return None
        callers = election._campaign.callers
        if self not in callers:  # the campaign's count of skipped calls reads ours (off the call path)
            callers[self] = self.skipped
        if wait and not election.wait_settled(0):
            timeout = self.startup_timeout
            if timeout is None:
                timeout = election.elector.settings.startup_timeout
            election.wait_settled(timeout)
        return election

    # -- the public face --------------------------------------------------------------------------

    def start(self) -> Election:
        """Campaign now instead of at the first call; returns the election (does not wait).

        :raises ConfigurationError: a bad setting.
        """
        election = self._attach(wait=False)
        if election is None:
            raise SingletonError(f"singleton cannot campaign in this process: {self._attachment.unavailable}")
        return election

    @property
    def election(self) -> Election | None:
        """The underlying election, or None before the first call or :meth:`start`."""
        return self._attachment.election

    @property
    def is_leader(self) -> bool:
        election = self._attachment.election
        return election is not None and election.is_leader

    @property
    def token(self) -> StopToken | None:
        election = self._attachment.election
        return None if election is None else election.token

    @property
    def holder(self) -> str | None:
        election = self._attachment.election
        return None if election is None else election.holder

    def status(self) -> ElectionStatus | None:
        """Who holds the key and why this process is not leading; None before the first call or start().

        After a configuration error, a status that says so (role STARTING, the error in ``error``).
        """
        election = self._attachment.election
        if election is not None:
            return election.status()
        error = self._attachment.error
        if error is None:
            return None
        return ElectionStatus(
            key=self.key,
            full_key=self.key,
            role=Role.STARTING,
            holder=None,
            holder_session=None,
            session=None,
            fence=None,
            since=None,
            lease_remaining=None,
            reason=f"configuration error: {error}",
            last_error=f"configuration error: {error}",
            ttl=self.overrides.ttl or 0.0,
            lock_delay=self.overrides.lock_delay or 0.0,
            error=error,
        )

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self.start().wait_for_leadership(timeout)

    def resign(self, timeout: float | None = 10.0) -> bool:
        election = self._attachment.election
        return False if election is None else election.resign(timeout)

    def campaign(self) -> None:
        self.start().campaign()

    # -- the call path's slow side ------------------------------------------------------------------

    def _token_or_none(self) -> StopToken | None:
        """The valid token to run under, attaching first if needed; None (and counted) when not leading.

        The wrappers call this only off their fast path: first call, after a shutdown, or not leading.

        :raises ConfigurationError: a bad setting.
        """
        attachment = self._attachment
        election = attachment.election
        if election is None or election.elector._closed:
            election = self._attach()
            if election is None:
                self.skipped += 1
                self._last_skipped = None
                return None
        campaign = attachment.campaign
        token = None if campaign is None else campaign.token
        if token is not None and not token.stopped:
            return token
        self.skipped += 1
        self._last_skipped = election
        return None

    @property
    def last_skip_reason(self) -> str | None:
        """Why the last call that did not run its body did not (worked out when asked, not per call)."""
        if not self.skipped:
            return None
        return self._why_not(self._last_skipped)

    def _why_not(self, election: Election | None) -> str:
        if election is None:
            return f"singleton cannot campaign in this process: {self._attachment.unavailable or 'shut down'}"
        status = election.status()
        if status.role is Role.STARTING:
            return "the first acquisition attempt has not finished (startup_timeout)"
        if status.is_leader:
            return "this process was not leading then (it leads now)"
        return status.reason or (f"held by {status.holder}" if status.holder else "not leader")

    def _not_leader(self) -> NotLeader:
        election = self._attachment.election
        return NotLeader(self.key, election.holder if election is not None else None, self.last_skip_reason)


class LeaderOnlyFunction(Protocol[P, R_co]):
    """What ``@leader_only`` returns: the function's own signature, with ``.election``.

    ``R_co`` is what a call returns: the body's result, or the ``default`` (None unless given) where
    the body does not run; with ``on_follower="raise"``, the body's result only. Reached through a
    class or an instance (a method, a classmethod, a staticmethod), it is a :class:`LeaderOnlyBound`.
    """

    election: LeaderOnlyHandle
    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(
        self: LeaderOnlyFunction[Concatenate[Any, P2], R2], instance: object, owner: type[Any] | None = None
    ) -> LeaderOnlyBound[P2, R2]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Self: ...


class LeaderOnlyBound(Protocol[P, R_co]):
    """A leader-only method as reached through its class or an instance.

    A type checker cannot tell a method from a classmethod or a staticmethod through a decorator, so
    both readings are accepted: the parameters after the first (an instance's method, a classmethod),
    or all of them with the first unchecked (a staticmethod, a method called on its class).
    """

    election: LeaderOnlyHandle
    __name__: str
    __qualname__: str

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __call__(self, first: Any, /, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class _Decorator(Protocol[D_co]):
    """``@leader_only(...)``: ``D_co`` is what a call returns where the body does not run."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, T]], /
    ) -> LeaderOnlyFunction[P, Coroutine[Any, Any, T | D_co]]: ...

    @overload
    def __call__(self, func: Callable[P, T], /) -> LeaderOnlyFunction[P, T | D_co]: ...


class _Options(Generic[T]):
    """The validated options of one ``@leader_only(...)``."""

    def __init__(
        self,
        key: str | None,
        lease: LeaseOverrides,
        default: Any,
        on_follower: str,
        startup_timeout: float | None,
        elector: Elector | None,
    ) -> None:
        if key is not None:
            validate_key(key)
        if on_follower not in ("skip", "raise"):
            raise ConfigurationError(f"on_follower must be 'skip' or 'raise', got {on_follower!r}")
        if startup_timeout is not None:
            startup_timeout = check_range("startup_timeout", startup_timeout, 0.0, 600.0)
        if elector is not None and not isinstance(elector, Elector):
            raise ConfigurationError(f"elector must be an Elector, got {elector!r}")
        self.key = key
        # Checked at decoration time; how they fit the process defaults is checked at the first call.
        self.lease = lease
        self.default = default
        self.on_follower = on_follower
        self.startup_timeout = startup_timeout
        self.elector = elector


@overload
def leader_only(
    func: Callable[P, Coroutine[Any, Any, T]], /
) -> LeaderOnlyFunction[P, Coroutine[Any, Any, T | None]]: ...


@overload
def leader_only(func: Callable[P, T], /) -> LeaderOnlyFunction[P, T | None]: ...


@overload
def leader_only(
    func: None = None,
    /,
    *,
    key: str | None = None,
    ttl: float | None = None,
    lock_delay: float | None = None,
    margin: float | None = None,
    check_ttl: float | None = None,
    default: None = None,
    on_follower: Literal["skip"] = "skip",
    startup_timeout: float | None = None,
    elector: Elector | None = None,
) -> _Decorator[None]: ...


@overload
def leader_only(
    func: None = None,
    /,
    *,
    key: str | None = None,
    ttl: float | None = None,
    lock_delay: float | None = None,
    margin: float | None = None,
    check_ttl: float | None = None,
    default: D,
    on_follower: Literal["skip"] = "skip",
    startup_timeout: float | None = None,
    elector: Elector | None = None,
) -> _Decorator[D]: ...


@overload
def leader_only(
    func: None = None,
    /,
    *,
    key: str | None = None,
    ttl: float | None = None,
    lock_delay: float | None = None,
    margin: float | None = None,
    check_ttl: float | None = None,
    default: object = None,
    on_follower: Literal["raise"],
    startup_timeout: float | None = None,
    elector: Elector | None = None,
) -> _Decorator[NoReturn]: ...


def leader_only(
    func: Any = None,
    /,
    *,
    key: str | None = None,
    ttl: float | None = None,
    lock_delay: float | None = None,
    margin: float | None = None,
    check_ttl: float | None = None,
    default: Any = None,
    on_follower: Literal["skip", "raise"] = "skip",
    startup_timeout: float | None = None,
    elector: Elector | None = None,
) -> Any:
    """Run the function's body only on the process that holds ``key``'s lock.

    :param key: the Consul key (under the configured ``key_prefix``); default ``module.qualname``.
    :param ttl: session TTL, 10..86400 s; default the process setting (15 s).
    :param lock_delay: at least the local lease + 0.5 s, at most 60 s; default the process setting.
    :param margin: the local lease is ``ttl - margin``; ``0 < margin < 2/3 ttl``; default ``max(1, ttl/5)``.
    :param check_ttl: fast failover: 1..ttl/2 s; a crashed holder is replaced about ``check_ttl +
        lock_delay`` later instead of after up to ``2 x ttl``; off by default (the process setting).
    :param default: what a call returns where the body does not run.
    :param on_follower: ``"skip"`` (return ``default``) or ``"raise"`` (:class:`NotLeader`).
    :param startup_timeout: how long the first call waits for the first acquisition attempt.
    :param elector: an :class:`Elector` of your own instead of the process-wide one.
    :raises ConfigurationError: at decoration time, for any bad option.
    """
    options: _Options[Any] = _Options(
        key,
        LeaseOverrides.checked(ttl=ttl, lock_delay=lock_delay, margin=margin, check_ttl=check_ttl),
        default,
        on_follower,
        startup_timeout,
        elector,
    )
    if func is None:
        return lambda f: _decorate(f, options)
    return _decorate(func, options)


def _decorate(func: Any, options: _Options[Any]) -> Any:
    if isinstance(func, (classmethod, staticmethod)):
        return type(func)(_decorate(func.__func__, options))
    if not callable(func):
        raise ConfigurationError(f"@leader_only decorates a function or method, got {func!r}")
    name = f"{func.__module__}.{func.__qualname__}"
    key = options.key or name
    validate_key(key)
    _declare(key, name, options.lease)
    handle = LeaderOnlyHandle(
        name, key, overrides=options.lease, startup_timeout=options.startup_timeout, elector=options.elector
    )
    attachment = handle._attachment
    wants_token = _STOP_TOKEN in inspect.signature(func).parameters
    default = options.default
    raise_on_follower = options.on_follower == "raise"
    # The fast path below reads the election's current token and checks it inline (the same test as
    # StopToken.stopped, without a Python call); anything else goes through handle._token_or_none().

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            campaign = attachment.campaign
            token = None if campaign is None else campaign.token
            if token is None or token._stopped or token._clock() >= token._lease.deadline:  # type: ignore[union-attr]
                if attachment.campaign is None:  # first call: the attempt's wait must not block the loop
                    await asyncio.get_running_loop().run_in_executor(None, handle._attach)
                token = handle._token_or_none()
                if token is None:
                    if raise_on_follower:
                        raise handle._not_leader()
                    return default
                campaign = attachment.campaign
            assert campaign is not None
            if wants_token:
                kwargs[_STOP_TOKEN] = token
            previous = _CURRENT.set(token)
            campaign.runs += 1
            bodies = campaign.bodies
            bodies.append(None)
            try:
                return await func(*args, **kwargs)
            finally:
                bodies.pop()
                _CURRENT.reset(previous)

        async_wrapper.election = handle  # type: ignore[attr-defined]
        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        campaign = attachment.campaign
        token = None if campaign is None else campaign.token
        if token is None or token._stopped or token._clock() >= token._lease.deadline:  # type: ignore[union-attr]
            token = handle._token_or_none()
            if token is None:
                if raise_on_follower:
                    raise handle._not_leader()
                return default
            campaign = attachment.campaign
        assert campaign is not None
        if wants_token:
            kwargs[_STOP_TOKEN] = token
        previous = _CURRENT.set(token)
        campaign.runs += 1  # one store on a slot, under the GIL (for metrics: singleton.contrib.prometheus)
        bodies = campaign.bodies
        bodies.append(None)
        try:
            return func(*args, **kwargs)
        finally:
            bodies.pop()
            _CURRENT.reset(previous)

    wrapper.election = handle  # type: ignore[attr-defined]
    return wrapper
