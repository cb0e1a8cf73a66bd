"""``singleton status``: who holds each key (``hostname:pid``), since when, the session, the fence.

Whatever came from Consul (keys, values, session names, nodes) may have been written by anyone who can
write the key: the text output shows it escaped (``\\x1b``, ``\\n``, a backslash as ``\\\\``) and
shortened, so it cannot move the cursor, retitle the window or hide a line. ``--json`` keeps every
value exact, as JSON escapes (ASCII only).

The holder's fence is the key's ModifyIndex read right after its acquisition. It is shown only while
the key's last write was that acquisition: any other write (``consul kv put``, a CAS, new flags)
raises the ModifyIndex without a new holder, and Consul resets the key's LockIndex to 0 with it (only
an acquisition sets a LockIndex of 1 or more). So a held key with a LockIndex of 0 has a fence that
cannot be known from outside, and is said to be so; ``--json`` gives ``fence`` (or null),
``lock_index`` and ``modify_index`` as Consul has them. (A write that re-acquires with the holder's
own session ID keeps the LockIndex: nobody but the holder should know that ID.)

A key paused by ``singleton pause`` says so, with who paused it, until when and why (``--json``:
``paused``, or null); without KEY, paused keys are shown even when nobody holds them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Any, TextIO

from singleton._controls import PAUSE, Pause, parse_pause, record_key, split_record_key
from singleton._text import escape
from singleton.backends import KeyInfo, SessionInfo, create_backend
from singleton.cli._common import EXIT_FREE, settings_from, unavailable
from singleton.errors import AccessDenied, BackendError
from singleton.exitcodes import EXIT_OK

__all__ = ["cmd_status"]

_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01: flags below this are not an acquisition time

# -- singleton status -------------------------------------------------------------------------------


def _since(flags: int) -> float | None:
    """The acquisition time this library writes in the key's flags, when they hold one."""
    now_ms = time.time() * 1000
    if _EPOCH_MS_MIN <= flags <= now_ms + 86_400_000:
        return flags / 1000
    return None


def _iso(epoch: float) -> str:
    text = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


#: How much of a value from Consul a line shows (the whole value is in --json).
_SHOWN_MAX = 200


def _safe(text: str | None) -> str | None:
    """``text`` for a terminal: every unprintable character and the backslash escaped, long text shortened."""
    if text is None:
        return None
    shown = text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX]
    escaped = "".join(c if c.isprintable() and c != "\\" else escape(c) for c in shown)
    if len(text) > len(shown):
        escaped += f"... ({len(text)} characters)"
    return escaped


def _describe(
    key: str, full_key: str, entry: KeyInfo | None, info: SessionInfo | None, pause: Pause | None = None
) -> dict[str, Any]:
    held = entry is not None and entry.session is not None
    since = _since(entry.flags) if entry is not None and held else None
    return {
        "key": key,
        "full_key": full_key,
        "exists": entry is not None,
        "held": held,
        "holder": entry.holder if entry is not None and held else None,
        "last_holder": entry.holder if entry is not None and not held else None,
        "since": _iso(since) if since is not None else None,
        "since_epoch": since,
        "session": entry.session if entry is not None else None,
        "session_name": info.name if info is not None else None,
        "node": info.node if info is not None else None,
        "ttl": info.ttl if info is not None else None,
        "lock_delay": info.lock_delay if info is not None else None,
        "fence": entry.modify_index if entry is not None and held and entry.lock_index > 0 else None,
        "lock_index": entry.lock_index if entry is not None else None,
        "modify_index": entry.modify_index if entry is not None else None,
        "paused": pause.as_json() if pause is not None and pause.in_force(time.time()) else None,
        "paused_text": pause.describe() if pause is not None and pause.in_force(time.time()) else None,
    }


def _line(item: dict[str, Any]) -> str:
    line = _held_line(item)
    if item["paused_text"]:
        line += f"; {_safe(item['paused_text'])}"
    return line


def _held_line(item: dict[str, Any]) -> str:
    key = _safe(item["key"])
    if not item["held"]:
        if not item["exists"]:
            return f"{key}: free (no such key)"
        last = f" (last held by {_safe(item['last_holder'])})" if item["last_holder"] else ""
        return f"{key}: free{last}"
    parts = [f"{key}: held by {_safe(item['holder']) or '?'}"]
    if item["since_epoch"] is not None:
        parts.append(f"for {_age(time.time() - item['since_epoch'])} (since {item['since']})")
    session = f"session {_safe(item['session'])}"
    if item["session_name"] and item["session_name"] != item["holder"]:
        session += f" named {_safe(item['session_name'])}"
    if item["ttl"] is not None:
        session += f" (ttl {item['ttl']:g}s, lock-delay {item['lock_delay']:g}s)"
    parts.append(session)
    if item["fence"] is not None:
        parts.append(f"fence {item['fence']}")
    else:
        parts.append(f"fence unknown: the key was written after its acquisition (modify index {item['modify_index']})")
    return parts[0] + " " + ", ".join(parts[1:])


def cmd_status(args: argparse.Namespace, stdout: TextIO) -> int:
    """``singleton status``: 0 when every key named is held, 1 when one is free."""
    settings = settings_from(args)
    wanted = [(key, settings.full_key(key)) for key in args.keys]
    backend = create_backend(settings)
    items: list[dict[str, Any]] = []
    try:
        pauses: dict[str, Pause] = {}
        if wanted:
            found = []
            for key, full_key in wanted:
                found.append((key, full_key, backend.read(full_key)[1]))
                _, record = backend.read(record_key(full_key, PAUSE))
                if record is not None:
                    pauses[full_key] = parse_pause(record)
        else:
            prefix = settings.key_prefix
            entries = backend.list_keys(prefix)
            for e in entries:
                split = split_record_key(e.key)
                if split is not None and split[1] == PAUSE and parse_pause(e).in_force(time.time()):
                    pauses[split[0]] = parse_pause(e)
            keys = {e.key: e for e in entries if "#" not in e.key}
            shown = sorted({k for k, e in keys.items() if e.session is not None} | set(pauses))
            found = [(k[len(prefix) :], k, keys.get(k)) for k in shown]
        for key, full_key, entry in found:
            info = None
            if entry is not None and entry.session is not None:
                try:
                    info = backend.session_info(entry.session)
                except AccessDenied:  # the holder is still known from the key; the session's details are extra
                    info = None
            items.append(_describe(key, full_key, entry, info, pauses.get(full_key)))
    except BackendError as exc:
        raise unavailable(exc) from None
    finally:
        backend.close()
    if args.json:
        for item in items:
            del item["paused_text"]
        print(json.dumps(items, indent=2), file=stdout)
    elif not items:
        print(f"no key is held or paused under {settings.key_prefix or 'the root'!r}", file=stdout)
    else:
        for item in items:
            print(_line(item), file=stdout)
    held = [item for item in items if item["held"]]
    if wanted:
        return EXIT_OK if len(held) == len(items) else EXIT_FREE
    return EXIT_OK if held else EXIT_FREE
