"""Consul sessions and KV locks, through py-consul.

This module is the only place that talks to Consul, and the only place that knows py-consul's and
requests' exceptions: each is translated into :mod:`singleton.errors` here, chained with ``from``.

* Each thread gets its own ``consul.Consul`` client (and so its own HTTP connection pool), because
  the election thread and the watch threads call at the same time. A client handed in by the caller
  (the Go-compatible entry point) is used as it is, from every thread.
* Calls that are not blocking queries time out after ``ConsulSettings.timeout``. A blocking query's
  HTTP timeout is that plus its wait plus wait/16, the most Consul may add as jitter (py-consul >= 1.8
  computes it so).
* Sessions are created with no health checks (not even the node's ``serfHealth``): only their TTL, or
  an explicit destroy, invalidates them, so Consul's TTL contract (never before the TTL) is what the
  holder's lease is measured against.
* The ACL token is passed explicitly to the client and never logged. py-consul lets
  ``CONSUL_HTTP_TOKEN`` override an explicit token; the settings already resolved arguments against
  the environment, so the resolved token is put back on the client after it is built.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import consul
import requests

from singleton.backends.base import Acquisition, Backend, KeyInfo, SessionInfo
from singleton.config import ConsulSettings, url_host
from singleton.errors import AccessDenied, BackendError, BackendUnavailable, SessionInvalidated

__all__ = ["ConsulBackend"]

_SESSION_RULE = 'session_prefix "" { policy = "write" }'


def _key_rule(key: str, policy: str) -> str:
    return f'key_prefix "{key}" {{ policy = "{policy}" }}'


def _duration(text: object) -> float | None:
    """Seconds from a Go duration ("15s", "1m30s", "1.5s") or nanoseconds (an int)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text) / 1e9
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([\d.]+)(ms|us|µs|ns|h|m|s)", str(text))
    return sum(float(n) * units[u] for n, u in parts) if parts else None


def _entry(raw: dict[str, Any] | None) -> KeyInfo | None:
    if raw is None:
        return None
    value = raw.get("Value")
    if isinstance(value, str):
        value = value.encode()
    return KeyInfo(
        key=str(raw["Key"]),
        session=raw.get("Session") or None,
        value=value,
        flags=int(raw.get("Flags") or 0),
        create_index=int(raw.get("CreateIndex") or 0),
        modify_index=int(raw.get("ModifyIndex") or 0),
        lock_index=int(raw.get("LockIndex") or 0),
    )


class ConsulBackend(Backend):
    """Sessions and locks on a Consul agent.

    Pass :class:`~singleton.config.ConsulSettings` (the usual case: clients are built per thread), or
    an existing ``consul.Consul`` client as ``client`` (py-consul, or python-consul2 with the same calls).
    """

    name = "consul"

    def __init__(self, settings: ConsulSettings | None = None, *, client: Any = None) -> None:
        if settings is not None and client is not None:
            raise TypeError("pass either settings or client, not both")
        self._settings = settings if settings is not None or client is not None else ConsulSettings.from_env()
        self._given = client
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        if self._settings is not None:
            return f"consul at {self._settings.address}"
        http = getattr(self._given, "http", None)
        return f"consul at {getattr(http, 'base_uri', 'a caller-provided client')}"

    def _client(self) -> Any:
        if self._given is not None:
            return self._given
        client = getattr(self._local, "client", None)
        if client is None:
            s = self._settings
            assert s is not None
            verify: bool | str = s.ca_cert if (s.verify and s.ca_cert) else s.verify
            cert = (s.client_cert, s.client_key) if s.client_cert else None
            client = consul.Consul(
                host=url_host(s.host),  # py-consul writes f"{scheme}://{host}:{port}": IPv6 needs its brackets
                port=s.port,
                scheme=s.scheme,
                token=s.token,
                verify=verify,
                cert=cert,
                dc=s.datacenter,
                connections_timeout=s.timeout,
            )
            # py-consul prefers CONSUL_HTTP_TOKEN over the token argument; ours is already resolved.
            client.token = s.token
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    @contextmanager
    def _errors(self, what: str, *, rule: str | None = None, not_found: str | None = None) -> Iterator[None]:
        """Translate every client error raised inside into ours; ``not_found`` makes a 404 SessionInvalidated."""
        try:
            yield
        except BackendError:
            raise
        except consul.NotFound as exc:
            if not_found is None:
                raise BackendError(f"Consul answered 404 to {what}: {_short(exc)}") from exc
            raise SessionInvalidated(not_found) from exc
        except requests.exceptions.RequestException as exc:
            raise BackendUnavailable(f"{self.description} did not answer {what}: {_cause(exc)}") from exc
        except consul.ACLPermissionDenied as exc:
            needed = f"; the token needs {rule}" if rule else ""
            raise AccessDenied(f"Consul ACL denied {what}{needed} ({_short(exc) or 'permission denied'})") from exc
        except consul.ACLDisabled as exc:
            raise AccessDenied(f"Consul refused {what}: {_short(exc) or 'ACL token not accepted'}") from exc
        except consul.Timeout as exc:
            raise BackendUnavailable(f"{self.description} timed out on {what}") from exc
        except consul.ConsulException as exc:
            text = _short(exc)
            if "invalid session" in text.lower():
                raise SessionInvalidated(f"{what}: the session no longer exists ({text})") from exc
            code = text.split(" ", 1)[0]
            if code.isdigit() and 400 <= int(code) < 500:
                raise BackendError(f"Consul rejected {what}: {text}") from exc
            raise BackendUnavailable(f"{self.description} failed {what}: {text}") from exc
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"{self.description} failed {what}: {type(exc).__name__}: {exc}") from exc

    def create_session(self, *, name: str, ttl: float, lock_delay: float) -> str:
        with self._errors("creating a session", rule=_SESSION_RULE):
            # No health checks: with the node's serfHealth a session could be invalidated before its
            # TTL (a node seen as failed), and the holder's lease would no longer end first.
            session_id = self._client().session.create(
                name=name, ttl=round(ttl), lock_delay=round(lock_delay), behavior="release", checks=[]
            )
        return str(session_id)

    def renew_session(self, session_id: str) -> None:
        gone = f"session {session_id} no longer exists (renew answered 404)"
        with self._errors(f"renewing session {session_id}", rule=_SESSION_RULE, not_found=gone):
            self._client().session.renew(session_id)

    def destroy_session(self, session_id: str) -> None:
        with self._errors(f"destroying session {session_id}", rule=_SESSION_RULE):
            self._client().session.destroy(session_id)

    def session_info(self, session_id: str) -> SessionInfo | None:
        with self._errors(f"reading session {session_id}", rule='session_prefix "" { policy = "read" }'):
            _, raw = self._client().session.info(session_id)
        if not raw:
            return None
        return SessionInfo(
            id=str(raw["ID"]),
            name=str(raw.get("Name") or ""),
            ttl=_duration(raw.get("TTL")),
            lock_delay=_duration(raw.get("LockDelay")) or 0.0,
            node=raw.get("Node"),
            create_index=int(raw.get("CreateIndex") or 0),
        )

    def acquire(self, key: str, session_id: str, value: bytes, flags: int = 0) -> Acquisition:
        with self._errors(f"acquiring key {key!r}", rule=_key_rule(key, "write")):
            ok = self._client().kv.put(key, value, acquire=session_id, flags=flags)
        _, entry = self.read(key)
        acquired = bool(ok) and entry is not None and entry.session == session_id
        return Acquisition(acquired=acquired, entry=entry)

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        with self._errors(f"releasing key {key!r}", rule=_key_rule(key, "write")):
            return bool(self._client().kv.put(key, value, release=session_id))

    def read(self, key: str) -> tuple[int, KeyInfo | None]:
        with self._errors(f"reading key {key!r}", rule=_key_rule(key, "read")):
            index, raw = self._client().kv.get(key)
        return int(index), _entry(raw)

    def watch(self, key: str, index: int, wait: float) -> tuple[int, KeyInfo | None]:
        with self._errors(f"watching key {key!r}", rule=_key_rule(key, "read")):
            new_index, raw = self._client().kv.get(key, index=index or None, wait=f"{max(1, round(wait))}s")
        return int(new_index), _entry(raw)

    def watch_prefix(self, prefix: str, index: int, wait: float) -> tuple[int, list[KeyInfo]]:
        with self._errors(f"watching keys under {prefix!r}", rule=_key_rule(prefix, "read")):
            new_index, raws = self._client().kv.get(
                prefix, recurse=True, index=index or None, wait=f"{max(1, round(wait))}s"
            )
        entries = [e for e in (_entry(raw) for raw in raws or []) if e is not None]
        return int(new_index), entries

    def list_keys(self, prefix: str) -> list[KeyInfo]:
        with self._errors(f"listing keys under {prefix!r}", rule=_key_rule(prefix, "read")):
            _, raws = self._client().kv.get(prefix, recurse=True)
        entries = [e for e in (_entry(raw) for raw in raws or []) if e is not None]
        return sorted(entries, key=lambda e: e.key)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            session = getattr(getattr(client, "http", None), "session", None)
            if session is not None:
                session.close()


def _cause(exc: requests.exceptions.RequestException) -> str:
    """The root of a requests error in a few words ("Connection refused", "read timed out")."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.exceptions.Timeout):
        return "read timed out"
    if isinstance(exc, requests.exceptions.ConnectionError) and "RemoteDisconnected" in text:
        return "the connection was closed without a response"
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
