"""Settings: frozen dataclasses, validated when built, read from arguments first and the environment second.

Consul is reached with the Consul CLI's own environment variables, so a shell where ``consul kv get``
works needs nothing more:

``CONSUL_HTTP_ADDR``        ``host:port``, ``http://host:port`` or ``https://host:port``
``CONSUL_HTTP_SSL``         ``true`` selects https when the address has no scheme
``CONSUL_HTTP_TOKEN``       ACL token (never logged, never shown in a repr)
``CONSUL_HTTP_TOKEN_FILE``  file holding the ACL token, used when ``CONSUL_HTTP_TOKEN`` is unset
``CONSUL_CACERT``           CA bundle that verifies the agent's certificate
``CONSUL_CLIENT_CERT``      client certificate (with ``CONSUL_CLIENT_KEY``) for mutual TLS
``CONSUL_CLIENT_KEY``
``CONSUL_HTTP_SSL_VERIFY``  ``false`` turns certificate verification off

Our own settings use ``SINGLETON_*``: ``SINGLETON_BACKEND`` (``consul``, ``memory://`` or
``file:///dir``), ``SINGLETON_KEY_PREFIX``, ``SINGLETON_TTL``, ``SINGLETON_LOCK_DELAY``,
``SINGLETON_MARGIN``.

Every bad value raises :class:`~singleton.errors.ConfigurationError` naming the parameter, the allowed
range and the value given.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from singleton.errors import ConfigurationError

__all__ = [
    "ConsulSettings",
    "LeaseSpec",
    "Settings",
    "holder_identity",
    "validate_key",
]

#: Consul's own limits for a session TTL, in seconds.
TTL_MIN, TTL_MAX = 10.0, 86400.0
#: Consul's own limits for a session lock-delay, in seconds.
LOCK_DELAY_MIN, LOCK_DELAY_MAX = 0.0, 60.0
#: Consul's longest blocking query wait is 10 minutes.
WATCH_WAIT_MIN, WATCH_WAIT_MAX = 1.0, 600.0

DEFAULT_TTL = 15.0
DEFAULT_LOCK_DELAY = 15.0
DEFAULT_WATCH_WAIT = 60.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_STARTUP_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_GRACE = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def holder_identity() -> str:
    """``hostname:pid``: the session name and key value that tell operators who holds a key."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    return number


def check_range(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float within ``low..high`` (inclusive), or a ConfigurationError naming ``name``."""
    number = _number(name, value)
    if not low <= number <= high:
        raise ConfigurationError(f"{name} must be between {low:g} and {high:g} seconds, got {value!r}")
    return number


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


#: The longest key accepted, prefix included, in bytes of UTF-8. Consul 1.8 sets no limit of its own:
#: its HTTP server refuses a request line over about 1 MB, and a key travels percent-encoded (up to
#: three bytes per byte) in the URL of every call, in ACL rules and in log lines. 512 bytes keeps all
#: of them small.
KEY_MAX_BYTES = 512
#: The file backend names two files after each key (``<percent-encoded key>.lock``, ``.json``); a
#: file name has at most 255 bytes on Linux and macOS.
FILE_KEY_MAX_ENCODED = 250
#: Characters that URLs give a meaning to: a client or proxy that does not escape them asks for another key.
_URL_RESERVED = "?#%\\"


def _shown(value: str) -> str:
    """``repr`` of a key for an error message, shortened when long (a key may be up to 1 MB of junk)."""
    if len(value) <= 80:
        return repr(value)
    return f"{value[:60]!r}... ({len(value.encode('utf-8', 'replace'))} bytes)"


def _key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as a Consul key that this library can use, or None.

    The rules keep a key the same on every path it takes: Consul's HTTP server cleans the URL path
    (``a/./b`` and ``a//b`` become ``a/b``, ``a/../b`` becomes ``b``, ``..`` leaves nothing), so such
    keys would be stored under another name, and under a key prefix they would escape it.
    """
    if not key:
        return "must be a non-empty Consul key such as 'reports/nightly'"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text (Consul stores keys as UTF-8; this one has a lone surrogate)"
    if re.search(r"\s", key) or not key.isprintable():
        return "must not contain whitespace or unprintable (control, formatting) characters"
    if key.startswith("/"):
        return f"must not start with '/': Consul keys are relative (use {key.lstrip('/')!r})"
    if key.endswith("/"):
        return "must not end with '/': that names a folder of keys, not a key"
    segments = key.split("/")
    if "" in segments:
        return "must not contain an empty segment ('//'): Consul's HTTP server would store one '/' instead"
    if "." in segments or ".." in segments:
        return (
            "must not contain a '.' or '..' segment: Consul's HTTP server would resolve it and store the "
            "key under another name (a/../b is b)"
        )
    reserved = sorted({c for c in key if c in _URL_RESERVED})
    if reserved:
        listed = " ".join(repr(c) for c in reserved)
        return (
            f"must not contain {listed}: URLs give these characters a meaning, and a client or proxy that "
            "does not escape them asks for another key"
        )
    if size > KEY_MAX_BYTES:
        return f"must be at most {KEY_MAX_BYTES} bytes of UTF-8 (this one has {size})"
    return None


def validate_key(key: object, name: str = "key") -> str:
    """A Consul KV key as given by a user: one that Consul stores, lists and watches under this very name.

    Segments separated by ``/``, none of them empty, ``.`` or ``..``; no leading or trailing ``/``;
    printable text without whitespace; none of ``? # % \\``; at most :data:`KEY_MAX_BYTES` bytes.

    :raises ConfigurationError: naming ``name`` and the rule broken.
    """
    if not isinstance(key, str):
        raise ConfigurationError(f"{name} must be a string, got {key!r}")
    problem = _key_problem(key)
    if problem is not None:
        raise ConfigurationError(f"{name} {problem}, got {_shown(key)}")
    return key


def _prefix(value: object) -> str:
    """The key prefix with its one trailing ``/`` (a prefix watch matches keys by string prefix)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ConfigurationError(f"key_prefix must be a string such as 'myapp/', got {value!r}")
    body = value[:-1] if value.endswith("/") else value
    problem = _key_problem(body)
    if problem is not None:
        problem = problem.replace(
            "must not end with '/': that names a folder of keys, not a key", "must end in one '/'"
        )
        raise ConfigurationError(f"key_prefix {problem}, got {_shown(value)}")
    return body + "/"


def parse_address(address: str, name: str = "CONSUL_HTTP_ADDR") -> tuple[str, str, int]:
    """``(scheme, host, port)`` from ``host:port``, ``http://host:port`` or ``https://host:port``."""
    text = address.strip()
    if not text:
        raise ConfigurationError(f"{name} must be host:port or http(s)://host:port, got {address!r}")
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"{name} must use http:// or https:// (unix sockets are not supported), got {address!r}"
            )
    parsed = urllib.parse.urlsplit("//" + text)
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or parsed.path not in ("", "/") or parsed.query or parsed.username:
        raise ConfigurationError(f"{name} must be host:port or http(s)://host:port, got {address!r}")
    if port is None:
        port = 443 if scheme == "https" else 8500
    return scheme, host, port


@dataclass(frozen=True)
class ConsulSettings:
    """Where and how to reach the Consul agent.

    Build it with :meth:`from_env` to apply the Consul CLI's environment variables; explicit
    arguments always win over the environment.
    """

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    datacenter: str | None = None
    #: HTTP timeout of every call that is not a blocking query (blocking queries add their wait).
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ConfigurationError(f"scheme must be 'http' or 'https', got {self.scheme!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be between 1 and 65535, got {self.port!r}")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigurationError(
                "client_cert and client_key (CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY) must be given together"
            )
        object.__setattr__(self, "timeout", check_range("timeout", self.timeout, 0.1, 300.0))

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def __repr__(self) -> str:
        token = "'<hidden>'" if self.token else "None"
        return (
            f"ConsulSettings(address={self.address!r}, token={token}, ca_cert={self.ca_cert!r}, "
            f"client_cert={self.client_cert!r}, verify={self.verify}, datacenter={self.datacenter!r}, "
            f"timeout={self.timeout:g})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ConsulSettings:
        """Settings from ``overrides`` first, then the ``CONSUL_*`` variables of ``environ`` (default os.environ).

        ``address`` may be passed as an override in any form ``CONSUL_HTTP_ADDR`` accepts.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        address = overrides.pop("address", None)
        if address is not None:
            scheme, values["host"], values["port"] = parse_address(str(address), "address")
        elif env.get("CONSUL_HTTP_ADDR"):
            scheme, values["host"], values["port"] = parse_address(env["CONSUL_HTTP_ADDR"])
        else:
            scheme = ""
        if not scheme and env.get("CONSUL_HTTP_SSL"):
            scheme = "https" if _flag("CONSUL_HTTP_SSL", env["CONSUL_HTTP_SSL"]) else "http"
        if scheme:
            values["scheme"] = scheme
        if env.get("CONSUL_HTTP_TOKEN"):
            values["token"] = env["CONSUL_HTTP_TOKEN"].strip()
        elif env.get("CONSUL_HTTP_TOKEN_FILE"):
            path = env["CONSUL_HTTP_TOKEN_FILE"]
            try:
                with open(path, encoding="utf-8") as handle:
                    values["token"] = handle.read().strip() or None
            except OSError as exc:
                raise ConfigurationError(
                    f"CONSUL_HTTP_TOKEN_FILE={path} cannot be read: {exc.strerror or exc}"
                ) from exc
        for name, variable in (
            ("ca_cert", "CONSUL_CACERT"),
            ("client_cert", "CONSUL_CLIENT_CERT"),
            ("client_key", "CONSUL_CLIENT_KEY"),
        ):
            if env.get(variable):
                values[name] = env[variable]
        if env.get("CONSUL_HTTP_SSL_VERIFY"):
            values["verify"] = _flag("CONSUL_HTTP_SSL_VERIFY", env["CONSUL_HTTP_SSL_VERIFY"])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown Consul setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class LeaseSpec:
    """How long a session lives and what protects its locks.

    ``ttl``: the session TTL, 10..86400 s (Consul's limits). The session is renewed every ``ttl / 3``.
    ``lock_delay``: 0..60 s; after the session is invalidated its keys cannot be taken for this long.
    ``margin``: the local lease is ``ttl - margin`` seconds from the moment the last successful renewal
    was *sent*. Past it the process treats leadership as lost: stop tokens fire and bodies are no longer
    started, before Consul could hand the lock to anyone else. The lease must outlast one renewal
    interval, so ``0 < margin < 2/3 * ttl``. Default: ``max(1, ttl / 5)``.
    """

    ttl: float = DEFAULT_TTL
    lock_delay: float = DEFAULT_LOCK_DELAY
    margin: float | None = None

    def __post_init__(self) -> None:
        ttl = check_range("ttl", self.ttl, TTL_MIN, TTL_MAX)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(
            self, "lock_delay", check_range("lock_delay", self.lock_delay, LOCK_DELAY_MIN, LOCK_DELAY_MAX)
        )
        margin = max(1.0, ttl / 5) if self.margin is None else _number("margin", self.margin)
        limit = ttl * 2 / 3
        if not 0 < margin < limit:
            raise ConfigurationError(
                f"margin must be greater than 0 and less than 2/3 of ttl so that the local lease "
                f"(ttl - margin) outlasts one renewal interval (ttl / 3): for ttl={ttl:g} the allowed "
                f"range is 0 < margin < {limit:g} seconds, got {self.margin!r}"
            )
        object.__setattr__(self, "margin", margin)

    @property
    def renew_interval(self) -> float:
        return self.ttl / 3

    @property
    def lease(self) -> float:
        """Seconds of leadership a successful renewal buys, counted from when it was sent."""
        assert self.margin is not None
        return self.ttl - self.margin


@dataclass(frozen=True)
class Settings:
    """Process-wide settings of the election engine; per-key values can be overridden by ``@leader_only``."""

    consul: ConsulSettings = field(default_factory=ConsulSettings)
    #: ``consul``, ``memory://`` (one process only: for tests) or ``file:///directory`` (one host only).
    backend: str = "consul"
    key_prefix: str = ""
    lease: LeaseSpec = field(default_factory=LeaseSpec)
    #: How long a blocking query on a key waits for a change before it is sent again.
    watch_wait: float = DEFAULT_WATCH_WAIT
    #: How long the first call of a decorated function waits for the first acquisition attempt.
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    #: On shutdown, how long running bodies get to finish after their stop token fired.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: The value written to every held key (and the session's name). None means ``hostname:pid``,
    #: worked out when an elector starts, so a process forked after configure() names itself.
    identity: str | None = None
    #: The Consul session's name; None means the identity.
    session_name: str | None = None

    def __post_init__(self) -> None:
        scheme = self.backend.split("://", 1)[0] if "://" in self.backend else self.backend
        if scheme not in ("consul", "memory", "file"):
            raise ConfigurationError(
                f"backend must be 'consul', 'memory://' or 'file:///directory', got {self.backend!r}"
            )
        if scheme == "file" and not urllib.parse.urlsplit(self.backend).path.startswith("/"):
            raise ConfigurationError(
                f"backend 'file://' needs an absolute directory, as in file:///var/run/myapp, got {self.backend!r}"
            )
        object.__setattr__(self, "key_prefix", _prefix(self.key_prefix))
        object.__setattr__(
            self, "watch_wait", check_range("watch_wait", self.watch_wait, WATCH_WAIT_MIN, WATCH_WAIT_MAX)
        )
        object.__setattr__(self, "startup_timeout", check_range("startup_timeout", self.startup_timeout, 0.0, 600.0))
        object.__setattr__(self, "shutdown_grace", check_range("shutdown_grace", self.shutdown_grace, 0.0, 3600.0))
        if self.identity is not None and not 0 < len(self.identity) <= 512:
            raise ConfigurationError(f"identity must be 1 to 512 characters, got {self.identity!r}")

    def full_key(self, key: str) -> str:
        """``key_prefix + key``, both checked, and short enough for Consul (and for file names).

        :raises ConfigurationError: naming the rule broken (see :func:`validate_key`).
        """
        full = self.key_prefix + validate_key(key)
        size = len(full.encode("utf-8"))
        if size > KEY_MAX_BYTES:
            raise ConfigurationError(
                f"key_prefix + key must be at most {KEY_MAX_BYTES} bytes of UTF-8 (this one has {size}), "
                f"got {_shown(full)}"
            )
        if self.backend.startswith("file:"):
            encoded = len(urllib.parse.quote(full, safe=""))
            if encoded > FILE_KEY_MAX_ENCODED:
                raise ConfigurationError(
                    f"key_prefix + key must be at most {FILE_KEY_MAX_ENCODED} characters once percent-encoded "
                    f"with the file backend, which names a file after it (this one has {encoded}), got {_shown(full)}"
                )
        return full

    def lease_for(
        self, ttl: float | None = None, lock_delay: float | None = None, margin: float | None = None
    ) -> LeaseSpec:
        """The process defaults with any of ``ttl``, ``lock_delay``, ``margin`` overridden."""
        if ttl is None and lock_delay is None and margin is None:
            return self.lease
        return LeaseSpec(
            ttl=self.lease.ttl if ttl is None else ttl,
            lock_delay=self.lease.lock_delay if lock_delay is None else lock_delay,
            # A ttl of its own gets a margin of its own, unless one is given.
            margin=margin if margin is not None else (None if ttl is not None else self.lease.margin),
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides`` first, then ``SINGLETON_*`` and ``CONSUL_*`` variables.

        Overrides may name any field, plus ``ttl``, ``lock_delay`` and ``margin`` (the default lease)
        and ``address``/``token``/... (any :class:`ConsulSettings` field) for Consul.
        """
        env = os.environ if environ is None else environ
        own = {f.name for f in dataclasses.fields(cls)}
        lease_names = {"ttl", "lock_delay", "margin"}
        consul_names = {f.name for f in dataclasses.fields(ConsulSettings)} | {"address"}
        unknown = set(overrides) - own - lease_names - consul_names
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        consul_overrides = {k: overrides.pop(k) for k in list(overrides) if k in consul_names - own}
        lease_values: dict[str, Any] = {}
        for name in sorted(lease_names):
            value = overrides.pop(name, None)
            if value is None:
                value = env.get(f"SINGLETON_{name.upper()}") or None
            if value is not None:
                lease_values[name] = _number(name, value)
        values: dict[str, Any] = {}
        if env.get("SINGLETON_BACKEND"):
            values["backend"] = env["SINGLETON_BACKEND"]
        if env.get("SINGLETON_KEY_PREFIX"):
            values["key_prefix"] = env["SINGLETON_KEY_PREFIX"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "consul" not in values:
            values["consul"] = ConsulSettings.from_env(env, **consul_overrides)
        if "lease" not in values:
            values["lease"] = LeaseSpec(**lease_values)
        return cls(**values)
