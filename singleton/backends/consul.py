"""Consul sessions and KV locks, over the agent's HTTP API (:mod:`singleton.backends._http`).

This module and ``_http`` are the only places that talk to Consul; every failure is translated into
:mod:`singleton.errors` here, chained with ``from``. No third-party Consul client is used (a ``consul``
module installed beside, py-consul or python-consul2, is never imported).

* **Deadlines.** A call that is not a blocking query ends within ``ConsulSettings.timeout``, connect
  to last byte. A blocking query's deadline is that plus its wait plus wait/16, the most jitter
  Consul adds to a wait.
* **Sessions** are created with ``Behavior=release`` and no node checks (``NodeChecks`` empty, so not
  even the node's ``serfHealth``, which could end a session whenever Consul sees the node as failed).
  In fast-failover mode the session lists the process's own TTL check in ``ServiceChecks`` (1.8.7
  ignores the legacy ``Checks`` when ``NodeChecks`` is given): Consul invalidates it as soon as that
  check goes critical or is deregistered. TTL and lock-delay are sent exactly, in milliseconds where a
  whole number of seconds does not fit ("8500ms"), rounded up, never down: a lock-delay shorter than
  the one the engine's arithmetic assumes would let a new holder in too early.
* **Health checks** (fast failover) are registered with the agent as a service ``singleton`` with one
  TTL check, ``DeregisterCriticalServiceAfter`` one minute (Consul's shortest) so that a crashed
  process's registration is reaped; fed with ``/v1/agent/check/pass``. An agent that does not hold the
  check answers "does not have associated TTL": :class:`~singleton.errors.CheckNotFound`.
* **Acquire** is one ``/v1/txn`` round trip: the KV verbs ``lock`` then ``get``, so a success
  returns the entry with its ModifyIndex (the fence) at once. A refused lock (the txn's 409, "lock
  is already held" or "due to lock delay") is followed by a plain read, to say who holds the key.
  An acquire is never re-sent on a broken connection: the engine decides what to do.
* **Answers are checked.** An answer that is not Consul's (HTML from a web server, ``{}`` where a
  list of entries belongs, a KV read without ``X-Consul-Index``, values that are not base64, a
  renewal that does not return the session) raises :class:`~singleton.errors.BackendError` saying
  the agent "does not look like a Consul agent", with a short sanitized excerpt, never a traceback.
  An ``X-Consul-Index`` lower than the one given is returned as it is (the watcher starts over).
* **ACLs.** A 403 "ACL not found" says the token is unknown to Consul; "Permission denied" names the
  rule the call needs. The token itself never appears in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

from singleton.backends._http import MAX_ANSWER_BYTES, Answer, HttpClient, excerpt
from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.config import ConsulSettings
from singleton.errors import AccessDenied, BackendError, BackendUnavailable, CheckNotFound, SessionInvalidated

__all__ = ["ConsulBackend"]

_SESSION_RULE = 'session_prefix "" { policy = "write" }'
_SESSION_READ_RULE = 'session_prefix "" { policy = "read" }'
#: How long Consul keeps a crashed process's service once its check is critical (Consul's shortest).
_REAP_AFTER = "1m"
_TOKEN_HINT = "check CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE"


def _key_rule(key: str, policy: str) -> str:
    return f'key_prefix "{key}" {{ policy = "{policy}" }}'


def go_duration(seconds: float) -> str:
    """A Go duration Consul parses exactly: whole seconds as "15s", anything else in ms, rounded up."""
    ms = math.ceil(round(seconds * 1000, 6))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _duration(value: object) -> float | None:
    """Seconds from a Go duration ("15s", "1m30s", "10500ms") or nanoseconds (a number)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _NotConsul(f"a duration of {value!r}")
    if isinstance(value, (int, float)):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise _NotConsul(f"a duration of type {type(value).__name__}")
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([\d.]+)(ms|us|µs|ns|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise _NotConsul(f"a duration of {excerpt(value)}")
    return sum(float(n) * units[u] for n, u in parts)


class _NotConsul(Exception):
    """An answer of the wrong shape; the text says what was wrong, briefly and without server data raw."""


def _int(raw: dict[str, Any], name: str, default: int | None = None) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _NotConsul(f"{name} is not a whole number")
    return value


def _entry(raw: object) -> KeyInfo:
    """A KV entry of a Consul answer."""
    if not isinstance(raw, dict):
        raise _NotConsul(f"a key entry that is {type(raw).__name__}, not an object")
    key = raw.get("Key")
    if not isinstance(key, str):
        raise _NotConsul("a key entry without Key")
    value = raw.get("Value")
    if value is not None:
        if not isinstance(value, str):
            raise _NotConsul("a Value that is not base64 text")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _NotConsul("a Value that is not base64") from exc
    session = raw.get("Session")
    if session is not None and not isinstance(session, str):
        raise _NotConsul("a Session that is not text")
    return KeyInfo(
        key=key,
        session=session or None,
        value=value,
        flags=_int(raw, "Flags", 0),
        create_index=_int(raw, "CreateIndex"),
        modify_index=_int(raw, "ModifyIndex"),
        lock_index=_int(raw, "LockIndex", 0),
    )


def _entries(data: object) -> list[KeyInfo]:
    if not isinstance(data, list):
        raise _NotConsul(f"{type(data).__name__} where a list of key entries belongs")
    return [_entry(raw) for raw in data]


class ConsulBackend(Backend):
    """Sessions and locks on a Consul agent, reached as :class:`~singleton.config.ConsulSettings` say.

    ``max_answer_bytes`` caps the size of any answer (64 MiB by default).
    """

    name = "consul"

    def __init__(self, settings: ConsulSettings | None = None, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._settings = settings if settings is not None else ConsulSettings.from_env()
        self._http = HttpClient(self._settings, self.description, max_answer_bytes=max_answer_bytes)

    @property
    def description(self) -> str:
        return f"consul at {self._settings.address}"

    # -- the one way out ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Sequence[tuple[str, str | None]] = (),
        body: bytes | None = None,
        wait: float | None = None,
        idempotent: bool = False,
    ) -> Answer:
        """Every call to Consul goes through here (tests and benchmarks count them by overriding it)."""
        timeout = self._settings.timeout
        if wait is not None:
            timeout += wait + wait / 16
        if self._settings.datacenter:
            query = [*query, ("dc", self._settings.datacenter)]
        return self._http.request(
            method, path, what=what, timeout=timeout, query=query, body=body, idempotent=idempotent
        )

    def _not_consul(self, what: str, detail: str) -> BackendError:
        return BackendError(f"{self.description} does not look like a Consul agent ({what}: {detail})")

    def _json(self, answer: Answer, what: str) -> Any:
        if answer.content_type == "text/html":
            raise self._not_consul(what, f"it answered {answer.status} with a web page {self._excerpt(answer)}")
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError) as exc:
            raise self._not_consul(
                what, f"it answered {answer.status} with something that is not JSON {self._excerpt(answer)}"
            ) from exc

    def _excerpt(self, answer: Answer | bytes | str) -> str:
        data = answer.body if isinstance(answer, Answer) else answer
        return excerpt(data, self._settings.token)

    def _index(self, answer: Answer, what: str) -> int:
        text = answer.header("X-Consul-Index")
        if text is None:
            raise self._not_consul(what, f"its {answer.status} answer has no X-Consul-Index header")
        if not text.strip().isdigit():
            raise self._not_consul(what, f"X-Consul-Index is {excerpt(text, self._settings.token)}")
        return int(text)

    def _refused(self, answer: Answer, what: str, rule: str | None) -> BackendError:
        """The error for a status the caller did not expect."""
        status, text = answer.status, answer.body.decode("utf-8", "replace").strip()
        if answer.content_type == "text/html":
            return self._not_consul(what, f"it answered {status} with a web page {self._excerpt(answer)}")
        if status == 403:
            if "acl not found" in text.lower():
                return AccessDenied(
                    f"Consul does not know the ACL token given for {what} (ACL not found): "
                    f"the token is invalid, expired or deleted; {_TOKEN_HINT}"
                )
            needed = f"; the token needs {rule}" if rule else ""
            reason = "permission denied" if "permission denied" in text.lower() else self._excerpt(text)
            return AccessDenied(f"Consul ACL denied {what}{needed} ({reason})")
        if status == 401:
            return AccessDenied(f"Consul refused {what}: the ACL token was not accepted; {_TOKEN_HINT}")
        if status == 429 or status >= 500:
            if "invalid session" in text.lower():
                return SessionInvalidated(f"{what}: the session no longer exists ({self._excerpt(text)})")
            return BackendUnavailable(f"{self.description} failed {what}: {status} {self._excerpt(text)}")
        if 300 <= status < 400:
            return self._not_consul(what, f"it answered {status} {self._excerpt(answer.reason)}, a redirect")
        if 400 <= status < 500:
            return BackendError(f"Consul rejected {what}: {status} {self._excerpt(text)}")
        return self._not_consul(what, f"it answered {status} {self._excerpt(answer.reason)}")

    def _expect(self, answer: Answer, what: str, rule: str | None, ok: tuple[int, ...] = (200,)) -> None:
        if answer.status not in ok:
            raise self._refused(answer, what, rule)

    # -- sessions ----------------------------------------------------------------------------------

    supports_checks = True

    def create_session(self, *, name: str, ttl: float, lock_delay: float, checks: Sequence[str] = ()) -> str:
        what = "creating a session"
        # No node checks: with the node's serfHealth a session could be invalidated before its TTL (a
        # node seen as failed), and the holder's lease would no longer end first. Our own checks, if
        # any, are service checks (fast failover).
        body = {
            "Name": name,
            "TTL": go_duration(ttl),
            "LockDelay": go_duration(lock_delay),
            "Behavior": "release",
            "Checks": [],
            "NodeChecks": [],
            "ServiceChecks": [{"ID": check} for check in checks],
        }
        answer = self._request("PUT", "/v1/session/create", what=what, body=json.dumps(body).encode())
        if answer.status == 500 and checks and answer.content_type != "text/html":
            text = answer.body.decode("utf-8", "replace")
            if "missing check" in text.lower() or "critical state" in text.lower():
                raise CheckNotFound(f"{what}: the agent {self._excerpt(text)} (the health check of fast failover)")
        self._expect(answer, what, _SESSION_RULE)
        data = self._json(answer, what)
        if not isinstance(data, dict) or not isinstance(data.get("ID"), str) or not data["ID"]:
            raise self._not_consul(what, f"no session ID in {self._excerpt(answer)}")
        return str(data["ID"])

    def renew_session(self, session_id: str) -> None:
        what = f"renewing session {session_id}"
        answer = self._request("PUT", f"/v1/session/renew/{_segment(session_id)}", what=what, idempotent=True)
        if answer.status == 404 and b"session" in answer.body.lower() and answer.content_type != "text/html":
            raise SessionInvalidated(f"session {session_id} no longer exists (renew answered 404)")
        self._expect(answer, what, _SESSION_RULE)
        data = self._json(answer, what)
        # A server that says 200 to anything must not pass for a renewal: the lease rests on it.
        if not (isinstance(data, list) and any(isinstance(s, dict) and s.get("ID") == session_id for s in data)):
            raise self._not_consul(what, f"the answer does not hold the session: {self._excerpt(answer)}")

    def destroy_session(self, session_id: str) -> None:
        what = f"destroying session {session_id}"
        answer = self._request("PUT", f"/v1/session/destroy/{_segment(session_id)}", what=what, idempotent=True)
        self._expect(answer, what, _SESSION_RULE)
        if not isinstance(self._json(answer, what), bool):
            raise self._not_consul(what, f"it answered {self._excerpt(answer)}, not true or false")

    def session_info(self, session_id: str) -> SessionInfo | None:
        what = f"reading session {session_id}"
        answer = self._request("GET", f"/v1/session/info/{_segment(session_id)}", what=what, idempotent=True)
        self._expect(answer, what, _SESSION_READ_RULE)
        data = self._json(answer, what)
        if data is None or data == []:
            return None
        try:
            if not isinstance(data, list) or not isinstance(data[0], dict):
                raise _NotConsul(f"{type(data).__name__} where a list of sessions belongs")
            raw = data[0]
            if not isinstance(raw.get("ID"), str):
                raise _NotConsul("a session without ID")
            node = raw.get("Node")
            return SessionInfo(
                id=raw["ID"],
                name=str(raw.get("Name") or ""),
                ttl=_duration(raw.get("TTL")),
                lock_delay=_duration(raw.get("LockDelay")) or 0.0,
                node=node if isinstance(node, str) else None,
                create_index=_int(raw, "CreateIndex", 0),
            )
        except _NotConsul as exc:
            raise self._not_consul(what, str(exc)) from exc

    # -- health checks (fast failover) -----------------------------------------------------------

    def register_check(self, check_id: str, *, service_id: str, name: str, ttl: float) -> None:
        what = f"registering the health check {check_id}"
        body = {
            "ID": service_id,
            "Name": name,
            "Check": {
                "CheckID": check_id,
                "Name": f"lease of {service_id}",
                "TTL": go_duration(ttl),
                "DeregisterCriticalServiceAfter": _REAP_AFTER,
                "Status": "passing",
            },
        }
        answer = self._request("PUT", "/v1/agent/service/register", what=what, body=json.dumps(body).encode())
        self._expect(answer, what, _service_rule(name))

    def pass_check(self, check_id: str) -> None:
        what = f"feeding the health check {check_id}"
        answer = self._request("PUT", f"/v1/agent/check/pass/{_segment(check_id)}", what=what, idempotent=True)
        if answer.status in (404, 500) and answer.content_type != "text/html":
            text = answer.body.decode("utf-8", "replace").lower()
            if "does not have associated ttl" in text or "unknown check" in text:
                raise CheckNotFound(f"the agent at {self._settings.address} does not hold the health check {check_id}")
        self._expect(answer, what, _service_rule("singleton"))

    def deregister_check(self, service_id: str) -> None:
        what = f"deregistering the service {service_id}"
        answer = self._request(
            "PUT", f"/v1/agent/service/deregister/{_segment(service_id)}", what=what, idempotent=True
        )
        self._expect(answer, what, _service_rule("singleton"))

    # -- keys --------------------------------------------------------------------------------------

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        what = f"acquiring key {key!r}"
        rule = _key_rule(key, "write")
        ops = [
            {
                "KV": {
                    "Verb": "lock",
                    "Key": key,
                    "Value": base64.b64encode(value).decode("ascii"),
                    "Flags": flags,
                    "Session": session_id,
                }
            },
            {"KV": {"Verb": "get", "Key": key}},
        ]
        answer = self._request("PUT", "/v1/txn", what=what, body=json.dumps(ops).encode())
        if answer.status == 200:
            data = self._json(answer, what)
            try:
                results = data.get("Results") if isinstance(data, dict) else None
                if not isinstance(results, list) or len(results) != 2 or not isinstance(results[1], dict):
                    raise _NotConsul(f"a transaction answer without its two results: {self._excerpt(answer)}")
                entry = _entry(results[1].get("KV"))
            except _NotConsul as exc:
                raise self._not_consul(what, str(exc)) from exc
            if entry.key != key or entry.session != session_id:
                raise self._not_consul(what, "the transaction succeeded, yet the key is not held by the session")
            return Acquisition(acquired=True, entry=entry)
        if answer.status != 409:
            raise self._refused(answer, what, rule)
        # 409: the transaction was rolled back; its Errors say why.
        data = self._json(answer, what)
        errors = data.get("Errors") if isinstance(data, dict) else None
        if not isinstance(errors, list) or not errors:
            raise self._not_consul(what, f"a 409 without Errors: {self._excerpt(answer)}")
        reasons = [str(e.get("What", "")) for e in errors if isinstance(e, dict) and e.get("OpIndex", 0) == 0]
        text = " ".join(reasons).lower()
        if "permission denied" in text:
            raise AccessDenied(f"Consul ACL denied {what}; the token needs {rule} (permission denied)")
        if "acl not found" in text:
            raise AccessDenied(f"Consul does not know the ACL token given for {what} (ACL not found); {_TOKEN_HINT}")
        if "invalid session" in text:
            raise SessionInvalidated(f"{what}: the session {session_id} no longer exists")
        if "lock is already held" in text or "lock delay" in text:
            _, held = self.read(key)
            return Acquisition(acquired=False, entry=held)
        raise BackendError(f"Consul refused the transaction {what}: {self._excerpt(' '.join(reasons))}")

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        what = f"releasing key {key!r}"
        answer = self._request(
            "PUT",
            f"/v1/kv/{_key_path(key)}",
            what=what,
            query=[("release", session_id)],
            body=value if value is not None else b"",
            idempotent=True,
        )
        self._expect(answer, what, _key_rule(key, "write"))
        done = self._json(answer, what)
        if not isinstance(done, bool):
            raise self._not_consul(what, f"it answered {self._excerpt(answer)}, not true or false")
        return done

    def put(self, key: str, value: bytes) -> None:
        what = f"writing key {key!r}"
        answer = self._request("PUT", f"/v1/kv/{_key_path(key)}", what=what, body=value, idempotent=True)
        self._expect(answer, what, _key_rule(key, "write"))
        if self._json(answer, what) is not True:
            raise self._not_consul(what, f"it answered {self._excerpt(answer)}, not true")

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        what = f"deleting key {key!r}"
        query = [] if cas is None else [("cas", str(cas))]
        # Sent again on a broken connection only without cas: a second try of a CAS that landed says False.
        answer = self._request("DELETE", f"/v1/kv/{_key_path(key)}", what=what, query=query, idempotent=cas is None)
        self._expect(answer, what, _key_rule(key, "write"))
        done = self._json(answer, what)
        if not isinstance(done, bool):
            raise self._not_consul(what, f"it answered {self._excerpt(answer)}, not true or false")
        return done

    def _get(
        self, path: str, what: str, rule: str, query: Sequence[tuple[str, str | None]], wait: float | None
    ) -> tuple[int, list[KeyInfo]]:
        answer = self._request("GET", path, what=what, query=query, wait=wait, idempotent=True)
        if answer.status not in (200, 404):
            raise self._refused(answer, what, rule)
        index = self._index(answer, what)  # Consul sends it on a 404 too; a web server does not
        if answer.status == 404:
            return index, []
        try:
            return index, _entries(self._json(answer, what))
        except _NotConsul as exc:
            raise self._not_consul(what, str(exc)) from exc

    def _blocking(self, index: int, wait: float) -> list[tuple[str, str | None]]:
        if not index:
            return []
        return [("index", str(index)), ("wait", go_duration(wait))]

    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        what = f"reading key {key!r}"
        index, entries = self._get(f"/v1/kv/{_key_path(key)}", what, _key_rule(key, "read"), [], None)
        return index, self._one(entries, key, what)

    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        what = f"watching key {key!r}"
        query = self._blocking(index, wait)
        new_index, entries = self._get(
            f"/v1/kv/{_key_path(key)}", what, _key_rule(key, "read"), query, wait if query else None
        )
        return new_index, self._one(entries, key, what)

    def _one(self, entries: list[KeyInfo], key: str, what: str) -> KeyInfo | None:
        if not entries:
            return None
        if len(entries) != 1 or entries[0].key != key:
            raise self._not_consul(what, f"{len(entries)} entries answered for one key")
        return entries[0]

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        what = f"watching keys under {prefix!r}"
        query = [("recurse", None), *self._blocking(index, wait)]
        return self._get(f"/v1/kv/{_key_path(prefix)}", what, _key_rule(prefix, "read"), query, wait if index else None)

    def list_keys(self, prefix: str) -> list[KeyInfo]:
        what = f"listing keys under {prefix!r}"
        _, entries = self._get(
            f"/v1/kv/{_key_path(prefix)}", what, _key_rule(prefix, "read"), [("recurse", None)], None
        )
        return sorted(entries, key=lambda e: e.key)

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def after_fork_in_child(self) -> None:
        self._http.after_fork_in_child()


def _service_rule(name: str) -> str:
    return f'service "{name}" {{ policy = "write" }}'


def _key_path(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")
