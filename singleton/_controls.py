"""Operators' controls: pause, resume and step-down, as records that travel through Consul beside each key.

Records
-------
A record is a plain KV entry named after its key with a reserved suffix, holding a small JSON object::

    <full key>#pause      {"by": "ops@bastion", "at": 1767225600.0, "until": 1767226200.0, "reason": "migration"}
    <full key>#step-down  {"by": "ops@bastion", "at": 1767225600.0, "session": "<the holder's session>",
                           "holder": "web-1:4242", "for": 10.0}

User keys never contain ``#`` (:func:`~singleton.config.validate_key` refuses it), so a record is never
a user's key; in URLs the ``#`` travels percent-encoded (``%23``). A record's name starts with its key's,
so every watch that covers a key covers its records: a process learns of one within a round trip of its
write, and writing one needs only KV write on the key's prefix. Any value at ``#pause`` pauses (``consul
kv put myapp/job#pause migration`` does: text that is not our JSON is the reason). ``until`` is wall-clock
time, which each process converts to its own monotonic clock when it reads the record.

Rules
-----
The election thread applies them, through ``Campaign._to`` (the one writer of a campaign's phase):

1. *Pause.* While a pause is in force the campaign is PAUSED and no body starts. A holder's token fires
   (:attr:`~singleton.token.StopCause.PAUSED`) and the key stays held, renewed, so nobody else can start
   meanwhile; followers make no attempt. A campaign learns of a pause from its watch, or, when it acquires
   the key before its watch has said anything of the records, from a read made before the term starts
   (a read that fails means no term: the campaign backs off and tries again).
2. *Resume.* The record is deleted (``singleton resume``) or its ``until`` passes: every campaign attempts
   at once, and the holder starts a new term (a new fence) on the key it kept.
3. *Step-down.* The process whose session the record names, while that session holds the key, ends its
   term (:attr:`~singleton.token.StopCause.STEPPED_DOWN`), deletes the record and is STEPPING_DOWN:
   running bodies get ``shutdown_grace`` seconds (looked at every :data:`BODY_POLL` s; the thread never
   blocks on them), then the key is released and a follower takes it within a round trip. Bodies still
   running after the grace keep the key held, as at shutdown, until they end: never two runs at once.
   Then it is STEPPED_DOWN for the record's ``for`` seconds, and campaigns again. A record naming
   another session (an earlier holder's) is left alone.
"""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from singleton import _retry
from singleton._phase import ATTEMPTING, Phase
from singleton._text import one_line
from singleton.backends.base import Backend, KeyInfo
from singleton.errors import BackendError
from singleton.token import StopCause

if TYPE_CHECKING:
    from singleton._campaign import Campaign
    from singleton._watch import KeyChanged

__all__ = [
    "BODY_POLL",
    "KINDS",
    "PAUSE",
    "STEP_DOWN",
    "STEP_DOWN_DEFAULT",
    "STEP_DOWN_MAX",
    "Controls",
    "Pause",
    "StepDown",
    "clear_pause",
    "operator",
    "parse_pause",
    "parse_step_down",
    "read_pause",
    "record_key",
    "record_keys",
    "request_step_down",
    "split_record_key",
    "write_pause",
]

_log = logging.getLogger("singleton.election")

PAUSE = "pause"
STEP_DOWN = "step-down"
KINDS = (PAUSE, STEP_DOWN)
#: How often a stepping-down campaign looks at its running bodies (they end without telling anyone).
BODY_POLL = 0.02
#: ... and once past the grace, when a body ignores its token and keeps the key held.
STUCK_POLL = 0.25
#: How long a process that stepped down stays out of the campaign unless the request says.
STEP_DOWN_DEFAULT = 10.0
STEP_DOWN_MAX = 86400.0
#: The longest text taken from a record (who, why): it is shown in logs and status.
TEXT_MAX = 200


# -- records -----------------------------------------------------------------------------------------


def record_key(full_key: str, kind: str) -> str:
    return f"{full_key}#{kind}"


def record_keys(full_key: str) -> tuple[str, ...]:
    return tuple(record_key(full_key, kind) for kind in KINDS)


def split_record_key(key: str) -> tuple[str, str] | None:
    """``(full key, kind)`` of a record's key, or None for any other key."""
    full_key, sep, kind = key.rpartition("#")
    if not sep or kind not in KINDS:
        return None
    return full_key, kind


def _iso(epoch: float) -> str:
    try:
        text = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{epoch:g}"
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Pause:
    """A pause record as read from Consul (times are wall-clock epoch seconds)."""

    index: int
    by: str | None = None
    at: float | None = None
    #: When the pause ends by itself; None: when resumed.
    until: float | None = None
    reason: str | None = None

    def in_force(self, wall_now: float) -> bool:
        return self.until is None or wall_now < self.until

    def describe(self) -> str:
        """``paused by ops@bastion until 2026-01-01T00:10:00Z: migration``."""
        text = "paused"
        if self.by:
            text += f" by {self.by}"
        text += f" until {_iso(self.until)}" if self.until is not None else " until resumed"
        return f"{text}: {self.reason}" if self.reason else text

    def as_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at, "until": self.until, "reason": self.reason}


@dataclass(frozen=True)
class StepDown:
    """A step-down request: the holder whose session it names steps down, and stays out ``seconds``."""

    index: int
    session: str
    holder: str | None
    by: str | None
    at: float | None
    seconds: float


def _fields(entry: KeyInfo) -> dict[str, Any] | str:
    text = (entry.value or b"").decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return data if isinstance(data, dict) else text


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return one_line(value)[:TEXT_MAX]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def parse_pause(entry: KeyInfo) -> Pause:
    """Any value pauses: our JSON, or text (the reason) written by hand."""
    fields = _fields(entry)
    if isinstance(fields, str):
        return Pause(entry.modify_index, reason=_text(fields))
    return Pause(
        entry.modify_index,
        by=_text(fields.get("by")),
        at=_number(fields.get("at")),
        until=_number(fields.get("until")),
        reason=_text(fields.get("reason")),
    )


def parse_step_down(entry: KeyInfo) -> StepDown | None:
    """The request, or None when it names no session (then it is nobody's to carry out)."""
    fields = _fields(entry)
    if isinstance(fields, str) or not isinstance(fields.get("session"), str):
        return None
    seconds = _number(fields.get("for"))
    if seconds is None or not 0 <= seconds <= STEP_DOWN_MAX:
        seconds = STEP_DOWN_DEFAULT
    return StepDown(
        entry.modify_index,
        session=fields["session"],
        holder=_text(fields.get("holder")),
        by=_text(fields.get("by")),
        at=_number(fields.get("at")),
        seconds=seconds,
    )


# -- what an operator does (the command line) ----------------------------------------------------------


def operator() -> str:
    """``user@host``: who writes a record, for the holders' logs and for status."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_pause(
    backend: Backend,
    full_key: str,
    *,
    seconds: float | None,
    reason: str | None,
    by: str,
    wall: Callable[[], float] = time.time,
) -> Pause:
    """Pause ``full_key`` everywhere, for ``seconds`` (None: until resumed). Returns the record as written.

    :raises BackendError: as :meth:`Backend.put`.
    """
    now = wall()
    until = None if seconds is None else now + seconds
    record = {"by": by, "at": now, "until": until, "reason": reason}
    backend.put(record_key(full_key, PAUSE), json.dumps(record).encode())
    return Pause(0, by=by, at=now, until=until, reason=_text(reason))


def read_pause(backend: Backend, full_key: str) -> Pause | None:
    """The key's pause record, in force or not; None when there is none.

    :raises BackendError: as :meth:`Backend.read`.
    """
    _, entry = backend.read(record_key(full_key, PAUSE))
    return None if entry is None else parse_pause(entry)


def clear_pause(backend: Backend, full_key: str) -> Pause | None:
    """Resume ``full_key``: delete its pause record. Returns the record deleted (None: there was none).

    :raises BackendError: as :meth:`Backend.read` and :meth:`Backend.delete`.
    """
    key = record_key(full_key, PAUSE)
    _, entry = backend.read(key)
    if entry is None:
        return None
    backend.delete(key)
    return parse_pause(entry)


def request_step_down(
    backend: Backend, full_key: str, holder: KeyInfo, *, seconds: float, by: str, wall: Callable[[], float] = time.time
) -> StepDown:
    """Ask the session holding ``full_key`` (as ``holder``, the key's entry, says) to step down.

    :raises BackendError: as :meth:`Backend.put`.
    """
    assert holder.session is not None
    now = wall()
    record = {"by": by, "at": now, "session": holder.session, "holder": holder.holder, "for": seconds}
    backend.put(record_key(full_key, STEP_DOWN), json.dumps(record).encode())
    return StepDown(0, session=holder.session, holder=holder.holder, by=by, at=now, seconds=seconds)


# -- what a campaign does with them (the election thread) ------------------------------------------------


class Controls:
    """The control records of one campaign's key, and the rules of the module docstring.

    Only the election thread calls it (as it does the campaign); any thread may read its fields.
    """

    __slots__ = (
        "_campaign",
        "_done",
        "_errors",
        "_grace",
        "_grace_end",
        "_index",
        "known",
        "pause",
        "pause_ends",
        "request",
    )

    def __init__(self, campaign: Campaign, *, grace: float, rng: _retry.Random) -> None:
        self._campaign = campaign
        self._grace = grace
        #: Whether this process has read the records since it registered the key (watch or read).
        self.known = False
        #: The pause record by the latest news (it may be over: see :meth:`paused`).
        self.pause: Pause | None = None
        #: When the pause ends, on the campaign's monotonic clock (inf: when resumed).
        self.pause_ends = math.inf
        #: The step-down request being carried out.
        self.request: StepDown | None = None
        self._index = 0
        self._done: int | None = None  # the index of the last request carried out
        self._grace_end = math.inf
        self._errors = _retry.ACQUIRE_ERROR.start(rng)

    def paused(self, now: float) -> bool:
        return self.pause is not None and now < self.pause_ends

    # -- the campaign's questions -------------------------------------------------------------------

    def ensure_known(self) -> BackendError | None:
        """Before a term starts: read the records unless the watch has told of them. The read's error, if any."""
        if self.known:
            return None
        c = self._campaign
        try:
            index, entries = c.backend.watch_prefix(c.full_key + "#", 0, 0.0)  # index 0: answers at once
        except BackendError as exc:
            c.note_error(exc, "read the key's control records", operation="control")
            return exc
        found = {record: entry for entry in entries if (record := split_record_key(entry.key)) is not None}
        self._index = max(self._index, index)
        self._set_pause(found.get((c.full_key, PAUSE)))
        self.known = True
        return None

    def campaign_again(self, reason: str) -> None:
        """Campaign (after a resume, a step-down's time out, a rejoin): an attempt now, unless paused."""
        c = self._campaign
        now = c._clock()
        if self.paused(now):
            assert self.pause is not None
            c._to(Phase.PAUSED, self.pause.describe(), due=self.pause_ends)
        else:
            c._to(Phase.ATTEMPT_DUE, reason, due=now)

    def pause_instead(self) -> bool:
        """When a term is about to start: if paused, enter PAUSED instead (keeping the key) and say so."""
        c = self._campaign
        if not self.paused(c._clock()):
            return False
        assert self.pause is not None
        c._to(Phase.PAUSED, self.pause.describe(), due=self.pause_ends)
        return True

    # -- the watch's news ------------------------------------------------------------------------------

    def on_record(self, kind: str, change: KeyChanged) -> None:
        """A record of this key changed (or was reported for the first time: ``entry`` None when missing)."""
        if change.reset:
            self._index = 0
        if change.index < self._index:
            return  # older than what a read told already
        self._index = change.index
        if kind == PAUSE:
            self.known = True
            self._set_pause(change.entry)
            self._enforce()
        elif change.entry is not None:
            self._on_request(change.entry)

    def _set_pause(self, entry: KeyInfo | None) -> None:
        c = self._campaign
        if entry is None:
            self.pause, self.pause_ends = None, math.inf
            return
        record = parse_pause(entry)
        self.pause = record
        self.pause_ends = math.inf if record.until is None else c._clock() + (record.until - c._wall())

    def _enforce(self) -> None:
        """A pause record came or went: pause now, or resume."""
        c = self._campaign
        if self.paused(c._clock()):
            assert self.pause is not None
            why = self.pause.describe()
            if c.phase is Phase.LEADING:
                c._to(Phase.PAUSED, why, due=self.pause_ends, cause=StopCause.PAUSED)
            elif c.phase in ATTEMPTING or c.phase in (Phase.WATCHING, Phase.PAUSED):
                c._to(Phase.PAUSED, why, due=self.pause_ends)
            # RESIGNED, STEPPING_DOWN, STEPPED_DOWN: their own rules apply, and campaign_again() pauses.
        elif c.phase is Phase.PAUSED:
            self.campaign_again("resumed")

    def _on_request(self, entry: KeyInfo) -> None:
        """Rule 3: a step-down request, carried out if it names this process's session and it holds the key."""
        c = self._campaign
        request = parse_step_down(entry)
        session = c.keeper.id
        if request is None or request.index == self._done or session is None or request.session != session:
            return
        if c.held_by != session or c.phase not in (Phase.LEADING, Phase.PAUSED):
            return
        self._done = request.index
        self.request = request
        now = c._clock()
        self._grace_end = now + self._grace
        asked = f"asked to step down by {request.by or 'an operator'}"
        _log.warning("%s was %s; out of the campaign for %gs", c.identity, asked, request.seconds)
        cause = StopCause.STEPPED_DOWN if c.phase is Phase.LEADING else None
        c._to(Phase.STEPPING_DOWN, f"stepping down: {asked}", due=now, cause=cause)
        self.tick(now)  # released at once when no body runs: the handoff first, the tidying after
        try:
            c.backend.delete(entry.key, cas=entry.modify_index)
        except BackendError as exc:  # it names this session only: nobody else acts on it, we did already
            c.note_error(exc, "delete the step-down request", current=False, operation="control")

    # -- the due times ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """An operators' phase whose ``due`` has come: look again."""
        c = self._campaign
        if c.phase is Phase.STEPPING_DOWN:
            self._finish_step_down(now)
        elif c.phase is Phase.STEPPED_DOWN:
            self.campaign_again("back in the campaign after stepping down")
        elif c.phase is Phase.PAUSED and not self.paused(now):
            self.campaign_again("the pause is over")

    def _finish_step_down(self, now: float) -> None:
        c = self._campaign
        running = len(c.bodies)
        if running:
            if now < self._grace_end:
                c._to(Phase.STEPPING_DOWN, c.reason, due=min(self._grace_end, now + BODY_POLL))
                return
            if c.due <= self._grace_end:  # the first look past the grace
                _log.warning(
                    "%r: %d running bodies did not end within the %gs grace of a step-down; the key stays held "
                    "until they do",
                    c.key,
                    running,
                    self._grace,
                )
            why = f"stepping down: {running} running bodies past the {self._grace:g}s grace keep the key held"
            c._to(Phase.STEPPING_DOWN, why, due=now + STUCK_POLL)
            return
        try:
            c.release()
        except BackendError as exc:
            c.note_error(exc, "release the key", operation="release")
            c._to(
                Phase.STEPPING_DOWN, f"stepping down: could not release the key: {exc}", due=now + self._errors.next()
            )
            return
        self._errors.reset()
        seconds = self.request.seconds if self.request is not None else STEP_DOWN_DEFAULT
        c._to(Phase.STEPPED_DOWN, f"stepped down; back in the campaign in {seconds:g}s", due=now + seconds)
