"""The Go package ``election_api``'s entry point, ``MaybeAcquireLeadership``, in Python, on the same engine.

::

    import consul
    from singleton.goapi import maybe_acquire_leadership

    class Job:
        def do_job(self, stop_event, done_event):
            for batch in batches():
                if stop_event.is_set():        # leadership lost (or about to be): stop now
                    return
                process(batch)
            done_event.set()                   # finished: the lock is released

    maybe_acquire_leadership(consul.Consul(), "service/report/leader", 10, 15, "report", False, Job())

How the Go parameters map
-------------------------
=============================  ===================================================================
``client``                     a ``consul.Consul`` of py-consul or of python-consul2: its connection
                               settings are used (address, scheme, ACL token, datacenter, TLS CA
                               bundle, client certificate, verification), not the client object;
                               the engine talks to Consul through its own HTTP client
``leader_key``                 the key to lock, used as given (a leading ``/`` is dropped, as the
                               Go client does); its value is ``hostname:pid``
``leadership_check_interval``  Go polled the key every interval; here changes arrive at once
                               through blocking queries, and the interval is how long one waits
                               before it is sent again: the longest any process goes without
                               re-reading the key when nothing changes. 1 to 600 seconds.
``session_ttl``                the session TTL, 10 to 86400 seconds (Consul's limits); renewed
                               every ``session_ttl / 3``
``session_name``               the session's Name ("" means ``hostname:pid``)
``exit_on_lock_found``         return :attr:`LeadershipOutcome.LOCK_FOUND` at once, without running
                               the job, when another process holds the key
``job``                        an object with ``do_job(stop_event, done_event)`` (Go's
                               ``DoJobFunc(stopCh, doneCh)``), or a callable taking the same two
``stopCh`` / ``doneCh``        two :class:`threading.Event`: the job sets ``done_event`` when it has
                               finished; ``stop_event`` is set when it must stop
=============================  ===================================================================

The lock-delay is Consul's default, 15 seconds, as the Go package's sessions had, raised (with a log
line) to the smallest safe value when ``session_ttl`` needs more: the lock-delay must outlast the local
lease (see :class:`~singleton.config.LeaseSpec`). ``lock_delay=`` sets it; a value too short for the
lease is refused. The session is created with ``behavior=release``. ``check_ttl=`` (fast failover, off
by default) links the session to a TTL health check of this process, so that a crashed holder is
replaced about ``check_ttl + lock_delay`` later instead of after up to ``2 x session_ttl``; the
lock-delay is then the smallest safe one unless given.

What happens when
-----------------
*Another process holds the key.* The call blocks (campaigning through the election engine) until the
key is free and this process takes it, or, with ``exit_on_lock_found``, returns ``LOCK_FOUND`` at
once. A key that is free but still inside a lock-delay is not "found": it is waited for.

*Leadership acquired.* ``job`` runs in a thread of its own. ``stop_event`` is set the moment leadership
ends or may end: the session's local lease runs out (``margin`` seconds before Consul could expire
the session), the session is invalidated, the key is deleted or taken. The call then waits up to
``grace`` seconds for the job to return and returns ``LOST``.

*The job sets done_event.* ``stop_event`` is set too, the call waits up to ``grace`` seconds for
``do_job`` to return, releases the key (no lock-delay: a follower takes over at once), destroys the
session and returns ``DONE``. A job that returns without setting ``done_event`` keeps the lock until
it does or leadership ends, as in Go: work it handed to another thread stays protected (a warning is
logged once).

*The job raises.* ``stop_event`` is set, the key released, and the exception re-raised here.

*Consul is unreachable.* The engine retries with backoff (logged, rate-limited) for as long as it
takes, as the Go function did; a leader whose renewals do not land loses leadership when its lease
runs out, before Consul could give the key to anyone else.

*KeyboardInterrupt* (or any exception in the calling thread): ``stop_event`` is set, the key released,
the exception propagates.

Differences from Go, on purpose
-------------------------------
* Go's function never returned after a loss: it campaigned again and started ``DoJobFunc`` anew.
  This one returns after one term, so that the caller sees the loss; for the Go behaviour::

      while maybe_acquire_leadership(...) is LeadershipOutcome.LOST:
          pass

* Go called ``os.Exit(0)`` when the lock was found with ``exitOnLockFound``; this returns
  ``LOCK_FOUND`` (``sys.exit(0)`` on it does what Go did).
* The client's own HTTP timeout is not used: every call gets the library's deadline (5 s, and a
  blocking query its wait plus that), so a hung agent cannot stall the engine.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

from singleton.config import (
    DEFAULT_LOCK_DELAY,
    ConsulSettings,
    LeaseOverrides,
    LeaseSpec,
    Settings,
    check_range,
    holder_identity,
    validate_key,
)
from singleton.election import AcquireOutcome, Election, Elector
from singleton.errors import ConfigurationError, LeadershipLost
from singleton.token import StopToken

__all__ = ["DoJob", "LeadershipOutcome", "maybe_acquire_leadership"]

_log = logging.getLogger("singleton.goapi")

#: How long the job gets to return after stop_event is set, by default.
DEFAULT_GRACE = 5.0


class DoJob(Protocol):
    """What ``job`` implements: Go's ``DoJob`` interface."""

    def do_job(self, stop_event: threading.Event, done_event: threading.Event) -> object:
        """Do the work; return when ``stop_event`` is set; set ``done_event`` when finished."""


class LeadershipOutcome(str, enum.Enum):
    """Why :func:`maybe_acquire_leadership` returned."""

    #: The job set done_event (or returned after setting it); the key was released.
    DONE = "done"
    #: Leadership ended before the job was done; stop_event was set.
    LOST = "lost"
    #: ``exit_on_lock_found`` and another process held the key; the job never ran.
    LOCK_FOUND = "lock_found"


class _DoneEvent(threading.Event):
    """The ``done_event`` given to the job: setting it also wakes the waiting caller."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()


def _job_callable(job: object) -> Callable[[threading.Event, threading.Event], object]:
    do_job = getattr(job, "do_job", None)
    if callable(do_job):
        return cast(Callable[[threading.Event, threading.Event], object], do_job)
    if callable(job):
        return job
    raise ConfigurationError(
        f"job must have a do_job(stop_event, done_event) method, or be a callable taking those two, got {job!r}"
    )


def _check_client(client: object) -> None:
    for part in ("kv", "session"):
        if not hasattr(client, part):
            raise ConfigurationError(
                f"client must be a consul.Consul client (py-consul, or python-consul2) with .kv and .session, "
                f"got {client!r}"
            )


def _settings_from_client(client: Any) -> ConsulSettings:
    """The connection settings of a ``consul.Consul`` (py-consul or python-consul2), read off it and its ``.http``.

    Both keep ``host``, ``port``, ``scheme``, ``verify`` (a bool, or the path of a CA bundle) and
    ``cert`` (a path, or a ``(cert, key)`` pair) on ``.http``, and ``token`` and ``dc`` on the client.
    """
    http = getattr(client, "http", None)
    host, port = getattr(http, "host", None), getattr(http, "port", None)
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ConfigurationError(
            "client must be a consul.Consul client (py-consul, or python-consul2) whose .http has host and port, "
            f"got {type(client).__name__}"
        )
    try:
        port = int(port)
    except ValueError as exc:
        raise ConfigurationError(f"the client's port must be a number, got {port!r}") from exc
    scheme = str(getattr(http, "scheme", None) or getattr(client, "scheme", None) or "http").lower()
    verify = getattr(http, "verify", True)
    cert = getattr(http, "cert", None)
    ca_cert = verify if isinstance(verify, str) and verify else None
    client_cert = client_key = None
    if isinstance(cert, (tuple, list)) and len(cert) == 2:
        client_cert, client_key = str(cert[0]), str(cert[1])
    elif isinstance(cert, str) and cert:
        client_cert = client_key = cert  # one PEM file holding both, as requests takes it
    token = getattr(client, "token", None)
    dc = getattr(client, "dc", None)
    return ConsulSettings(
        host=host.strip("[]"),
        port=port,
        scheme=scheme,
        token=token or None,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        verify=verify is not False,
        datacenter=str(dc) if dc else None,
    )


def maybe_acquire_leadership(
    client: Any,
    leader_key: str,
    leadership_check_interval: float,
    session_ttl: float,
    session_name: str,
    exit_on_lock_found: bool,
    job: DoJob | Callable[[threading.Event, threading.Event], object],
    *,
    lock_delay: float | None = None,
    check_ttl: float | None = None,
    grace: float = DEFAULT_GRACE,
) -> LeadershipOutcome:
    """Acquire ``leader_key`` and run ``job`` while holding it: Go's ``election_api.MaybeAcquireLeadership``.

    See the module docstring for what each parameter means here and for what happens when.

    :returns: :attr:`LeadershipOutcome.DONE` when the job set ``done_event``, ``LOST`` when leadership
        ended first, ``LOCK_FOUND`` with ``exit_on_lock_found`` when another process held the key.
    :raises ConfigurationError: for any bad argument, naming it and its allowed range (before any I/O).
    :raises BaseException: whatever ``job`` raised, after the key was released.
    """
    _check_client(client)
    consul_settings = _settings_from_client(client)
    if not isinstance(leader_key, str):
        raise ConfigurationError(f"leader_key must be a string, got {leader_key!r}")
    key = validate_key(leader_key.lstrip("/") or leader_key, "leader_key")
    interval = check_range("leadership_check_interval", leadership_check_interval, 1.0, 600.0)
    if not isinstance(session_name, str) or len(session_name) > 512:
        raise ConfigurationError(f"session_name must be a string of at most 512 characters, got {session_name!r}")
    if not isinstance(exit_on_lock_found, bool):
        raise ConfigurationError(f"exit_on_lock_found must be True or False, got {exit_on_lock_found!r}")
    run_job = _job_callable(job)
    lease = _lease(session_ttl, lock_delay, check_ttl)
    grace = check_range("grace", grace, 0.0, 3600.0)
    settings = Settings(
        consul=consul_settings,
        lease=lease,
        watch_wait=interval,
        identity=holder_identity(),
        session_name=session_name or None,
        shutdown_grace=grace,
    )
    from singleton.backends.consul import ConsulBackend

    elector = Elector(settings, backend=ConsulBackend(consul_settings), name="singleton-goapi")
    wake = threading.Event()
    stop_event = threading.Event()
    done_event = _DoneEvent(wake)
    failure: list[BaseException] = []
    returned = threading.Event()
    thread: threading.Thread | None = None

    try:
        election = elector.register(key)
        token = _campaign(election, exit_on_lock_found)
        if token is None:
            return LeadershipOutcome.LOCK_FOUND

        def body() -> None:
            try:
                with election.body(token):  # current_token() in the job; shutdown waits for it
                    run_job(stop_event, done_event)
            except LeadershipLost as exc:  # lost before it started, or the job stopped on the token: LOST
                if not token.stopped:
                    failure.append(exc)
            except BaseException as exc:  # handed to the caller's thread, re-raised there
                failure.append(exc)
            finally:
                returned.set()
                wake.set()

        def on_stop(_token: StopToken) -> None:
            stop_event.set()
            wake.set()

        token.add_callback(on_stop)
        thread = threading.Thread(target=body, name=f"singleton-job[{key}]", daemon=True)
        thread.start()
        outcome = _watch(key, token, done_event, returned, failure, wake)
    finally:
        stop_event.set()
        if thread is not None:
            thread.join(grace)
            if thread.is_alive():
                _log.warning("%r: do_job did not return within %gs of stop_event; releasing anyway", key, grace)
        elector.close(grace=0)  # release the key, then destroy the session
    if failure:
        raise failure[0]
    return outcome


def _lease(session_ttl: object, lock_delay: object, check_ttl: object = None) -> LeaseSpec:
    """The lease of Go's session: ``session_ttl``, and Consul's default lock-delay (15 s) unless given.

    The default is raised, with a log line, when the lease needs a longer one (see LeaseSpec); a
    ``lock_delay`` given too short is refused.
    """
    names = {"ttl": "session_ttl"}
    if lock_delay is not None:
        overrides = LeaseOverrides.checked(ttl=session_ttl, lock_delay=lock_delay, check_ttl=check_ttl, names=names)
        return Settings().lease.derive(overrides)
    spec = Settings().lease.derive(LeaseOverrides.checked(ttl=session_ttl, check_ttl=check_ttl, names=names))
    if spec.check_ttl is None and spec.lock_delay is not None and spec.lock_delay > DEFAULT_LOCK_DELAY:
        _log.info(
            "session_ttl=%g: the lock-delay is %gs instead of Consul's default %gs, so that it outlasts the "
            "local lease (%gs) when Consul ends the session early",
            spec.ttl,
            spec.lock_delay,
            DEFAULT_LOCK_DELAY,
            spec.lease,
        )
    return spec


def _campaign(election: Election, exit_on_lock_found: bool) -> StopToken | None:
    """This term's token once leading; None when ``exit_on_lock_found`` and another process holds the key.

    Consul errors are retried for as long as it takes, as the Go function did.
    """
    while True:
        result = election.acquire(0 if exit_on_lock_found else None, give_up_on_error=False)
        if result.outcome is AcquireOutcome.LEADER:
            return result.token
        if result.outcome is AcquireOutcome.HELD_ELSEWHERE:
            _log.info("%r is held by %s: not running the job (exit_on_lock_found)", election.key, result.holder)
            return None
        if result.outcome is AcquireOutcome.PAUSED:  # only with exit_on_lock_found: a wait for ever waits it out
            _log.info("%r is %s: not running the job (exit_on_lock_found)", election.key, result.reason)
            return None
        if result.outcome is AcquireOutcome.CLOSED:
            raise LeadershipLost(election.key, result.reason or "the election was closed")


def _watch(
    key: str,
    token: StopToken,
    done_event: threading.Event,
    returned: threading.Event,
    failure: list[BaseException],
    wake: threading.Event,
) -> LeadershipOutcome:
    warned = False
    while True:
        wake.clear()
        if failure:
            return LeadershipOutcome.DONE  # the caller re-raises it
        if done_event.is_set():
            return LeadershipOutcome.DONE
        if token.stopped:
            lost = not (token.cause is not None and token.cause.by_operator)
            _log.warning(
                "%r: %s (%s); stop_event set", key, "leadership lost" if lost else "told to stop", token.reason
            )
            return LeadershipOutcome.LOST
        if returned.is_set() and not warned:
            warned = True
            _log.warning(
                "%r: do_job returned without setting done_event; keeping the lock until done_event is set "
                "or leadership ends, as the Go function does",
                key,
            )
        # Wake at the lease's end at the latest: the token fires on that read even if the election
        # thread is stuck in a call.
        remaining = token.remaining()
        wake.wait(min(1.0, remaining) if remaining is not None else 1.0)
