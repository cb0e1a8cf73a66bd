"""The fault checker on hand-written logs: each rule passes a good log and fails a bad one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from .checker import Event, check, fired_at, parse_lines, read_logs, settle_bound

TTL, LOCK_DELAY = 10.0, 8.5
A, B, C, DRIVER = 101, 202, 303, 999


def ev(t: float, pid: int, kind: str, **data: Any) -> Event:
    return Event(t, pid, kind, data)


def start(t: float, pid: int, term: int = 1, fence: int = 10) -> Event:
    return ev(t, pid, "start", term=term, fence=fence)


def fired(
    t: float, pid: int, term: int = 1, cause: str = "key_released", deadline: float | None = None, fence: int = 10
) -> Event:
    return ev(t, pid, "fired", term=term, fence=fence, cause=cause, reason=cause, lease_deadline=deadline)


def end(t: float, pid: int, term: int = 1) -> Event:
    return ev(t, pid, "end", term=term)


def handover_log() -> list[Event]:
    """A leads, the fault at 5, A's token fires at 6, B takes over at 9 and leads to the end at 20."""
    return [
        ev(0.0, DRIVER, "begin"),
        start(1.0, A, fence=10),
        ev(5.0, DRIVER, "fault", what="partition"),
        fired(6.0, A, deadline=12.0),
        end(6.1, A),
        start(9.0, B, fence=20),
        ev(11.0, DRIVER, "heal"),
        ev(20.0, DRIVER, "observed"),
    ]


def test_a_clean_handover_passes_with_its_figures() -> None:
    verdict = check(handover_log(), ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.ok, verdict.problems()
    assert verdict.min_margin == pytest.approx(3.0)
    assert verdict.longest_gap == pytest.approx(3.0)  # 6 (A's token) .. 9 (B's start)
    assert verdict.settlement.settled
    assert verdict.settlement.leader_after == 0.0  # B led since before the heal
    assert verdict.summary()["late_tokens"] == 0


def test_overlapping_runs_fail() -> None:
    # B starts at 5 while A still runs; A is killed at 7 (no token, so no late token: only the overlap shows it).
    events = [
        start(1.0, A, fence=10),
        ev(4.0, DRIVER, "fault"),
        start(5.0, B, fence=20),
        ev(7.0, DRIVER, "killed", target=A),
        ev(20.0, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert len(verdict.overlaps) == 1
    assert verdict.overlaps[0].seconds == pytest.approx(2.0)
    assert not verdict.late_tokens
    assert not verdict.ok


def test_a_token_firing_after_the_next_start_fails_even_without_an_overlap() -> None:
    # A's body ended at 3, but its token only fired at 6, after B started at 5.
    events = [
        start(1.0, A, fence=10),
        end(3.0, A),
        ev(4.0, DRIVER, "fault"),
        start(5.0, B, fence=20),
        fired(6.0, A, deadline=9.0),
        ev(20.0, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert not verdict.overlaps
    assert len(verdict.late_tokens) == 1
    assert verdict.min_margin == pytest.approx(-1.0)
    assert any("late token" in p for p in verdict.problems())


def test_a_token_that_never_fired_is_late_when_another_process_starts() -> None:
    events = [start(1.0, A), ev(2.0, DRIVER, "fault"), start(5.0, B, fence=20), ev(8.0, DRIVER, "observed")]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.late_tokens
    assert verdict.overlaps
    assert not verdict.settlement.settled  # two leaders at the end


def test_the_lease_deadline_is_when_a_frozen_process_token_fired() -> None:
    # A is frozen from 2 to 40: its lease ran out at 8, its callback only runs at 40; B took over at 30.
    events = [
        start(1.0, A, fence=10),
        ev(2.0, DRIVER, "fault", what="SIGSTOP"),
        start(30.0, B, fence=20),
        ev(40.0, DRIVER, "heal"),
        fired(40.01, A, cause="key_taken", deadline=8.0),
        end(40.02, A),
        ev(50.0, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.ok, verdict.problems()
    assert verdict.min_margin == pytest.approx(22.0)
    # Without the lease deadline the same callback would be 10 s late: the rule reads it.
    assert fired_at(fired(40.01, A, deadline=None)) == 40.01
    assert fired_at(fired(40.01, A, deadline=8.0)) == 8.0


def test_fences_must_increase_from_one_holder_to_the_next() -> None:
    events = [
        start(1.0, A, fence=30),
        fired(4.0, A),
        start(5.0, B, fence=30),
        ev(9.0, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.fence_problems
    assert not verdict.ok


def test_equal_fences_are_allowed_within_one_process_but_not_lower_ones() -> None:
    resumed = [start(1.0, A, 1, 30), fired(4.0, A, 1), start(5.0, A, 2, 30), ev(9.0, DRIVER, "observed")]
    assert not check(resumed, ttl=TTL, lock_delay=LOCK_DELAY).fence_problems
    lower = [start(1.0, A, 1, 30), fired(4.0, A, 1), start(5.0, A, 2, 29), ev(9.0, DRIVER, "observed")]
    assert check(lower, ttl=TTL, lock_delay=LOCK_DELAY).fence_problems


def test_a_fleet_without_a_leader_after_the_heal_does_not_settle() -> None:
    events = [*handover_log()[:-1], fired(12.0, B, cause="lease_expired", deadline=12.0)]
    events.append(ev(60.0, DRIVER, "observed"))
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert not verdict.settlement.settled
    assert "no leader" in verdict.settlement.why
    assert verdict.longest_gap == pytest.approx(48.0)


def test_a_leader_found_only_beyond_the_bound_does_not_settle() -> None:
    bound = settle_bound(TTL, LOCK_DELAY)
    assert bound == 2 * TTL + LOCK_DELAY + 5
    late = 11.0 + bound + 1
    events = [
        start(1.0, A),
        fired(6.0, A),
        ev(11.0, DRIVER, "heal"),
        start(late, B, fence=20),
        ev(late + 5, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert not verdict.settlement.settled
    on_time = [*events[:3], start(11.0 + bound - 1, B, fence=20), ev(late + 5, DRIVER, "observed")]
    assert check(on_time, ttl=TTL, lock_delay=LOCK_DELAY).settlement.settled


def test_any_traceback_fails() -> None:
    events = [*handover_log(), ev(7.0, C, "traceback", where="thread x", text="Traceback ...\nKeyError: 1")]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.tracebacks
    assert not verdict.ok
    # Tracebacks count wherever they are, even after the end of the observation.
    after = [*handover_log(), ev(25.0, C, "traceback", where="exit", text="boom")]
    assert not check(after, ttl=TTL, lock_delay=LOCK_DELAY).ok


def test_an_error_exit_fails_unless_the_driver_killed_the_worker() -> None:
    events = [*handover_log(), ev(21.0, DRIVER, "exited", target=B, code=1)]
    assert check(events, ttl=TTL, lock_delay=LOCK_DELAY).bad_exits
    killed = [*handover_log()[:-1], ev(15.0, DRIVER, "killed", target=C), handover_log()[-1]]
    killed.append(ev(21.0, DRIVER, "exited", target=C, code=-9))
    assert check(killed, ttl=TTL, lock_delay=LOCK_DELAY).ok


def test_a_killed_holder_has_no_margin_and_its_run_ends_at_the_kill() -> None:
    events = [
        start(1.0, A, fence=10),
        ev(5.0, DRIVER, "fault", what="SIGKILL"),
        ev(5.0, DRIVER, "killed", target=A),
        start(25.0, B, fence=20),
        ev(30.0, DRIVER, "observed"),
    ]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.ok, verdict.problems()
    assert verdict.min_margin is None
    assert verdict.summary()["handovers_after_death"] == 1
    assert verdict.longest_gap == pytest.approx(20.0)
    assert verdict.settlement.leader_after == pytest.approx(20.0)


def test_events_after_the_end_of_the_observation_are_not_judged() -> None:
    # At teardown every worker is stopped: the graceful handovers then are not the fault's.
    events = [*handover_log(), fired(21.0, B, cause="shutdown"), start(21.01, C, fence=30)]
    verdict = check(events, ttl=TTL, lock_delay=LOCK_DELAY)
    assert verdict.ok
    assert len(verdict.terms) == 2


def test_logs_are_read_from_files_and_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    worker = tmp_path / "h1.jsonl"
    lines = [json.dumps({"t": 1.0, "pid": A, "ev": "start", "term": 1, "fence": 5}), '{"t": 2.0, "pid"']
    worker.write_text("\n".join(lines))
    driver = tmp_path / "driver.jsonl"
    driver.write_text(json.dumps({"t": 3.0, "pid": DRIVER, "ev": "observed"}) + "\n")
    events = read_logs([worker, driver, tmp_path / "missing.jsonl"])
    assert [e.ev for e in events] == ["start", "observed"]
    with pytest.raises(ValueError, match="not a JSON line"):
        parse_lines(['{"t": 1', json.dumps({"t": 1.0, "pid": 1, "ev": "x"})])


def test_no_run_at_all_is_an_infinite_gap_and_not_settled() -> None:
    verdict = check([ev(0.0, DRIVER, "begin"), ev(10.0, DRIVER, "observed")], ttl=TTL, lock_delay=LOCK_DELAY)
    assert math.isinf(verdict.longest_gap)
    assert verdict.summary()["longest_gap"] is None
    assert not verdict.ok
