"""The faults: each one a function that injects it into a running :class:`Scenario` and heals it.

Each gets the scenario and the host whose worker leads, marks ``fault`` when it strikes and ``heal``
when it is over (a fault that is never undone, such as a crash, heals at once: the fleet must recover
around it). The settle bound is counted from the heal.

``FAULT_SET`` chooses what runs: ``ci`` (the default: the faults that matter most and are quick,
what ``make test`` runs), ``all`` (``make faults``), or names separated by commas. ``FAULT_TRIALS``
sets the trials of each (default 1, and 3 under ``make faults``). ``FAULT_LOCK_DELAY`` replaces the
smallest accepted lock-delay (it is reported with the figures): a larger one, or, on an engine that
accepted it, a smaller one to show what it lets through. The engine now refuses a lock-delay below
``LeaseSpec.min_lock_delay``, so the workers fail at start with one (a traceback in their logs).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .scenario import Host, Scenario


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[Scenario, Host], None]
    #: In the CI set that ``make test`` runs.
    ci: bool
    what: str
    #: Observe at least this long after the heal, even with a stable leader.
    at_least: float = 5.0
    #: Fast failover: the workers link their sessions to a health check with this TTL.
    check_ttl: float | None = None


def sigkill_holder(s: Scenario, holder: Host) -> None:
    s.mark("fault", what=f"SIGKILL of the holder {holder.name}")
    s.kill_worker(holder)
    s.mark("heal")


def sigstop_holder(s: Scenario, holder: Host) -> None:
    at = s.mark("fault", what=f"SIGSTOP of the holder {holder.name} for 38 s")
    s.signal_worker(holder, signal.SIGSTOP)
    s.sleep_past(at, 38)
    s.signal_worker(holder, signal.SIGCONT)
    s.mark("heal")


def raft_leader_kill(s: Scenario, holder: Host) -> None:
    leader = s.cluster.leader()
    at = s.mark("fault", what=f"SIGKILL of the raft leader {leader.node}, restarted 10 s later with its data")
    leader.kill()
    s.sleep_past(at, 10)
    s.mark("heal")
    leader.start(wait=False)


def agent_kill_restart(s: Scenario, holder: Host) -> None:
    at = s.mark("fault", what=f"SIGKILL of the holder's agent {holder.name}, restarted 3 s later with its data")
    holder.agent.kill()
    s.sleep_past(at, 3)
    s.mark("heal")
    holder.agent.start(wait=False)


def agent_sigstop(s: Scenario, holder: Host) -> None:
    at = s.mark("fault", what=f"SIGSTOP of the holder's agent {holder.name} for 38 s")
    holder.agent.pause()
    s.sleep_past(at, 38)
    holder.agent.resume()
    s.mark("heal")


def partition(seconds: float) -> Callable[[Scenario, Host], None]:
    def inject(s: Scenario, holder: Host) -> None:
        at = s.mark("fault", what=f"partition of the holder {holder.name} from its agent for {seconds:g} s")
        holder.proxy.partition()
        s.sleep_past(at, seconds)
        holder.proxy.heal()
        s.mark("heal")

    return inject


def latency(s: Scenario, holder: Host) -> None:
    at = s.mark("fault", what="+2 s each way on every worker's link to its agent, for 30 s")
    for host in s.hosts:
        host.proxy.latency = 2.0
    s.sleep_past(at, 30)
    for host in s.hosts:
        host.proxy.latency = 0.0
    s.mark("heal")


def servers_outage(seconds: float) -> Callable[[Scenario, Host], None]:
    def inject(s: Scenario, holder: Host) -> None:
        at = s.mark("fault", what=f"SIGKILL of every server, restarted {seconds:g} s later with their data")
        s.cluster.kill_servers()
        s.sleep_past(at, seconds)
        s.mark("heal")
        s.cluster.start_servers()

    return inject


def agent_graceful_restart(s: Scenario, holder: Host) -> None:
    s.mark("fault", what=f"graceful restart of the holder's agent {holder.name} (it leaves: its node is deregistered)")
    holder.agent.restart(graceful=True, wait=False)
    s.mark("heal")


def agent_graceful_restart_holder_stalled(s: Scenario, holder: Host) -> None:
    """The holder cannot hear of the deregistration in time: it is frozen for 3 s as its agent leaves
    (a host busy with the configuration run that restarts the agent). Only the lock-delay covers it."""
    s.mark("fault", what=f"the holder {holder.name} frozen for 3 s while its agent restarts gracefully")
    s.signal_worker(holder, signal.SIGSTOP)
    resume = threading.Timer(3.0, os.kill, (holder.pid, signal.SIGCONT))
    resume.start()
    try:
        holder.agent.restart(graceful=True, wait=False)
    finally:
        resume.join()
    s.mark("heal")


def sigstop_holder_past_check(s: Scenario, holder: Host) -> None:
    """Fast failover: frozen longer than its check, so Consul ends its session and another process takes
    the key while it is frozen; when it runs again its token must already have fired."""
    assert s.check_ttl is not None
    frozen = s.check_ttl + s.lock_delay + 4
    at = s.mark(
        "fault", what=f"SIGSTOP of the holder {holder.name} for {frozen:g} s (past its {s.check_ttl:g} s check)"
    )
    s.signal_worker(holder, signal.SIGSTOP)
    s.sleep_past(at, frozen)
    s.signal_worker(holder, signal.SIGCONT)
    s.mark("heal")


def agent_kill_force_leave(s: Scenario, holder: Host) -> None:
    s.mark("fault", what=f"SIGKILL of the holder's agent {holder.name}, then consul force-leave {holder.name}")
    holder.agent.kill()
    server = s.cluster.servers[0]
    server.wait_member_status(holder.name, "failed", timeout=60)
    server.force_leave(holder.name)
    s.mark("heal", what="force-leave done; the agent stays down")


def agent_reload(s: Scenario, holder: Host) -> None:
    s.mark("fault", what=f"consul reload of the holder's agent {holder.name}")
    holder.agent.reload()
    s.mark("heal")


def lock_delay_replay(s: Scenario, holder: Host) -> None:
    """Issue 8, section 1: the raft log holds a lock-delay invalidation of the key, then every server
    is down longer than the lease and comes back with its data, replaying it."""
    session = s.session_of_key()
    assert session is not None, s.report("the key has no session while a worker leads it")
    s.mark("note", what=f"crash of the first holder {holder.name}; its session {session} invalidated at once")
    s.kill_worker(holder)
    # What Consul's TTL reaper does 10 to 20 s later: one raft entry that invalidates the session and
    # puts the key under its lock-delay.
    s.destroy_session(session)
    s.wait_for(lambda: (h := s.holder()) is not None and h is not holder, s.lock_delay + 20, "a leader after the crash")
    time.sleep(2.0)
    down = s.spec.lease + 4
    at = s.mark("fault", what=f"SIGKILL of every server for {down:g} s (longer than the {s.spec.lease:g} s lease)")
    s.cluster.kill_servers()
    s.sleep_past(at, down)
    s.mark("heal")
    s.cluster.start_servers()


FAULTS = [
    # Not in the CI set: tests/test_integration.py fails a crashed leader over in the default mode already.
    Fault("sigkill-holder", sigkill_holder, False, "SIGKILL of the holder"),
    Fault("sigstop-holder-38s", sigstop_holder, False, "SIGSTOP of the holder for 38 s, then SIGCONT"),
    Fault("raft-leader-kill", raft_leader_kill, False, "SIGKILL of the raft leader (restarted after 10 s)"),
    Fault("agent-kill-restart", agent_kill_restart, False, "the holder's agent SIGKILLed, restarted after 3 s"),
    Fault("agent-sigstop-38s", agent_sigstop, False, "the holder's agent SIGSTOPped for 38 s"),
    Fault("partition-5s", partition(5), True, "the holder cut off from its agent for 5 s"),
    Fault("partition-38s", partition(38), False, "the holder cut off from its agent for 38 s"),
    Fault("latency-2s", latency, False, "+2 s each way on every link for 30 s"),
    Fault("servers-outage-5s", servers_outage(5), False, "every server SIGKILLed, restarted after 5 s"),
    Fault("servers-outage-40s", servers_outage(40), False, "every server SIGKILLed, restarted after 40 s"),
    Fault("agent-graceful-restart", agent_graceful_restart, True, "graceful restart of the holder's agent"),
    Fault(
        "agent-graceful-restart-stalled",
        agent_graceful_restart_holder_stalled,
        False,
        "graceful restart of the holder's agent while the holder is frozen for 3 s",
    ),
    Fault("agent-kill-force-leave", agent_kill_force_leave, False, "the holder's agent SIGKILLed, then force-leave"),
    Fault("agent-reload", agent_reload, False, "consul reload of the holder's agent", at_least=12.0),
    Fault("lock-delay-replay", lock_delay_replay, True, "lock-delay replayed after every server was down"),
    # Fast failover (check_ttl 2 s): the faults issue 10 names.
    Fault("fast-sigkill-holder", sigkill_holder, True, "fast mode: SIGKILL of the holder", check_ttl=2.0),
    Fault(
        "fast-sigstop-holder",
        sigstop_holder_past_check,
        True,
        "fast mode: SIGSTOP of the holder past its check TTL, then SIGCONT",
        check_ttl=2.0,
    ),
    Fault(
        "fast-agent-kill-restart",
        agent_kill_restart,
        False,
        "fast mode: the holder's agent SIGKILLed, restarted after 3 s",
        check_ttl=2.0,
    ),
    Fault(
        "fast-agent-graceful-restart",
        agent_graceful_restart,
        False,
        "fast mode: graceful restart of the holder's agent",
        check_ttl=2.0,
    ),
    Fault(
        "fast-agent-reload",
        agent_reload,
        False,
        "fast mode: consul reload of the holder's agent",
        at_least=12.0,
        check_ttl=2.0,
    ),
    Fault(
        "fast-partition-5s", partition(5), False, "fast mode: the holder cut off from its agent for 5 s", check_ttl=2.0
    ),
]


def ci_faults() -> list[str]:
    return [f.name for f in FAULTS if f.ci]


def selection_name() -> str:
    """``ci``, ``all``, or ``custom`` (a list of names): the report's folder under ``.faults/``."""
    choice = os.environ.get("FAULT_SET", "ci").strip() or "ci"
    return choice if choice in ("ci", "all") else "custom"


def selected() -> set[str]:
    """The names ``FAULT_SET`` selects (``ci`` by default)."""
    choice = os.environ.get("FAULT_SET", "ci").strip() or "ci"
    if choice == "all":
        return {f.name for f in FAULTS}
    if choice == "ci":
        return set(ci_faults())
    names = {n.strip() for n in choice.split(",") if n.strip()}
    unknown = names - {f.name for f in FAULTS}
    if unknown:
        raise ValueError(f"FAULT_SET names unknown faults {sorted(unknown)}; known: {[f.name for f in FAULTS]}")
    return names


def trials() -> int:
    value = os.environ.get("FAULT_TRIALS", "").strip()
    if not value:
        return 1
    count = int(value)
    if not 1 <= count <= 100:
        raise ValueError(f"FAULT_TRIALS must be between 1 and 100, got {value!r}")
    return count


def lock_delay_override() -> float | None:
    value = os.environ.get("FAULT_LOCK_DELAY", "").strip()
    return float(value) if value else None


def selection_summary() -> str:
    chosen = selected()
    rest = [f.name for f in FAULTS if f.name not in chosen]
    override = lock_delay_override()
    return (
        f"faults: running {len(chosen)} of {len(FAULTS)} ({', '.join(sorted(chosen))}), {trials()} trial(s) each"
        + (f", lock_delay={override:g} (FAULT_LOCK_DELAY)" if override is not None else "")
        + (f"; not selected, run by `make faults`: {', '.join(rest)}" if rest else "")
    )
