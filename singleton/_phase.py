"""The phases of a key's campaign (``singleton._campaign`` moves between them; ``singleton._controls`` adds
the operators' ones). A module of its own so that both can name them, with arrows one way."""

from __future__ import annotations

import enum

__all__ = ["ATTEMPTING", "TIMED", "Phase"]


class Phase(str, enum.Enum):
    """Where a key's campaign stands. ``due`` is when the next acquisition attempt (or, in the operators'
    phases, the next look at them) is made."""

    #: Registered; the first attempt is due at once.
    STARTING = "starting"
    #: An attempt is due (a release was seen, a term ended): made as soon as the session is valid.
    ATTEMPT_DUE = "attempt_due"
    #: The last attempt, or the session, failed with an error: the next attempt waits out a backoff.
    BACKING_OFF = "backing_off"
    #: The key is free but inside the lock-delay its last holder left: the next attempt is when it ends.
    LOCK_DELAY = "lock_delay"
    #: Another session holds the key: the watch tells when it changes (no polling).
    WATCHING = "watching"
    #: This process holds the key; the term's stop token is live.
    LEADING = "leading"
    #: Not campaigning (resign(), or shutdown).
    RESIGNED = "resigned"
    #: An operator paused the key: no body starts here. A holder keeps the key; ``due``: the pause's end.
    PAUSED = "paused"
    #: Asked to step down: the term is over; running bodies get their grace, then the key is released.
    STEPPING_DOWN = "stepping_down"
    #: Stepped down: out of the campaign until ``due``.
    STEPPED_DOWN = "stepped_down"


#: The phases in which an acquisition attempt is made once ``due`` has come.
ATTEMPTING = frozenset({Phase.STARTING, Phase.ATTEMPT_DUE, Phase.BACKING_OFF, Phase.LOCK_DELAY})
#: The operators' phases: at ``due`` the controls look again (singleton._controls).
TIMED = frozenset({Phase.PAUSED, Phase.STEPPING_DOWN, Phase.STEPPED_DOWN})
