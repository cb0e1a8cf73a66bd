"""Settings: frozen dataclasses, validated when built, read from arguments first and the environment second.

Consul is reached with the Consul CLI's own environment variables, so a shell where ``consul kv get``
works needs nothing more:

``CONSUL_HTTP_ADDR``        ``host:port``, ``[ipv6]:port``, ``http://host:port`` or ``https://host:port``
                            (without a port: 80 for http, 443 for https, as for the consul CLI)
``CONSUL_HTTP_SSL``         ``true`` selects https when the address has no scheme
``CONSUL_HTTP_TOKEN``       ACL token (never logged, never shown in a repr)
``CONSUL_HTTP_TOKEN_FILE``  file holding the ACL token, used when ``CONSUL_HTTP_TOKEN`` is unset
``CONSUL_CACERT``           CA bundle that verifies the agent's certificate
``CONSUL_CLIENT_CERT``      client certificate (with ``CONSUL_CLIENT_KEY``) for mutual TLS
``CONSUL_CLIENT_KEY``
``CONSUL_HTTP_SSL_VERIFY``  ``false`` turns certificate verification off

Our own settings use ``SINGLETON_*``: ``SINGLETON_BACKEND`` (``consul``, ``memory://`` or
``file:///dir``), ``SINGLETON_KEY_PREFIX``, ``SINGLETON_TTL``, ``SINGLETON_LOCK_DELAY``,
``SINGLETON_MARGIN``, ``SINGLETON_CHECK_TTL`` (fast failover), ``SINGLETON_HANDLE_SIGTERM`` (``false``
leaves SIGTERM alone).

Every field is checked where the settings are built, and every bad value raises
:class:`~singleton.errors.ConfigurationError` naming the parameter, what it may be and the value given
(a secret, such as the token, is never quoted). Keys and the key prefix are checked by
:func:`validate_key`: only names Consul stores, lists and watches as they are written.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
    "LeaseOverrides",
    "LeaseSpec",
    "Settings",
    "holder_identity",
    "require_settings",
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


def check_flag(name: str, value: object, choices: str = "true or false") -> bool | None:
    """``value`` as a bool (``None`` and bools as given; "1"/"true"/"yes"/"on" and their opposites), or
    a ConfigurationError naming ``name`` and the ``choices``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{name} must be {choices}, got {value!r}")


def _flag(name: str, value: str) -> bool:
    return bool(check_flag(name, value))


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


def _token_problem(token: object) -> str | None:
    """What is wrong with an ACL token, in words that never include the token itself."""
    if not isinstance(token, str):
        return f"must be a string, got a value of type {type(token).__name__}"
    if any(not (32 <= ord(ch) < 127) for ch in token):
        return (
            "must be printable ASCII on one line: it contains a newline, a control character or a non-ASCII "
            "character (a token file with a second line?); the token is not shown"
        )
    return None


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


_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)")
_DATACENTER = re.compile(r"[A-Za-z0-9_-]+")


def _host_problem(host: str) -> str | None:
    """What is wrong with ``host`` (a name, an IPv4 or an IPv6 address without brackets), or None."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "is not an IPv6 address"
        return None
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "must be a host name (letters, digits, '-', '_' between dots), an IPv4 address or an IPv6 address"
    return None


def check_host(host: object, name: str = "host") -> str:
    """``host`` as it is stored: a name or an IP address, an IPv6 address without its brackets."""
    if not isinstance(host, str):
        raise ConfigurationError(f"{name} must be a host name or an IP address, got {host!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    problem = _host_problem(bare)
    if problem is not None:
        raise ConfigurationError(f"{name} {problem}, got {host!r}")
    return bare


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets (its zone, if any, as ``%25``)."""
    return f"[{host.replace('%', '%25')}]" if ":" in host else host


def parse_address(address: str, name: str = "CONSUL_HTTP_ADDR") -> tuple[str, str, int]:
    """``(scheme, host, port)`` from what the consul CLI takes in ``CONSUL_HTTP_ADDR``.

    ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port``, each optionally after ``http://`` or
    ``https://``; the scheme is ``""`` when not given. Without a port the scheme's own applies, as for
    the consul CLI: 80 for http, 443 for https. The host comes back without brackets.
    """
    usage = "host:port, [IPv6]:port or http(s)://host:port"
    if not isinstance(address, str):
        raise ConfigurationError(f"{name} must be {usage}, got {address!r}")
    text = address.strip()
    if not text:
        raise ConfigurationError(f"{name} must be {usage}, got {address!r}")
    scheme = ""
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"{name} must use http:// or https:// (unix sockets are not supported), got {address!r}"
            )
    if text.count(":") > 1 and not text.startswith("[") and "@" not in text:
        raise ConfigurationError(f"{name}: put an IPv6 address in brackets, as in [::1]:8500, got {address!r}")
    try:
        parsed = urllib.parse.urlsplit("//" + text)
        host = parsed.hostname
    except ValueError:
        host = None
    if not host or parsed.path not in ("", "/") or parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise ConfigurationError(f"{name} must be {usage}, got {address!r}")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port is not None and not 0 < port < 65536:
        raise ConfigurationError(f"{name}: the port must be a number from 1 to 65535, got {address!r}")
    if text.startswith("["):
        host = urllib.parse.unquote(host)  # an IPv6 zone is written %25 in a URL
    problem = _host_problem(host)
    if problem is not None:
        raise ConfigurationError(f"{name}: the host {problem}, got {address!r}")
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, host, port


def _path(name: str, value: object) -> str | None:
    """A file path setting: None, or a non-empty path without control characters (a str or PathLike)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or re.search(r"[\x00-\x1f\x7f]", value):
        raise ConfigurationError(f"{name} must be the path of a file, or None, got {value!r}")
    return value


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
        object.__setattr__(self, "host", check_host(self.host))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be a whole number from 1 to 65535, got {self.port!r}")
        if self.scheme not in ("http", "https"):
            raise ConfigurationError(f"scheme must be 'http' or 'https', got {self.scheme!r}")
        for name in ("ca_cert", "client_cert", "client_key"):
            object.__setattr__(self, name, _path(name, getattr(self, name)))
        if not isinstance(self.verify, bool):
            raise ConfigurationError(
                f"verify must be True or False (a CA bundle to verify with goes in ca_cert), got {self.verify!r}"
            )
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigurationError(
                "client_cert and client_key (CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY) must be given together"
            )
        if self.datacenter is not None and (
            not isinstance(self.datacenter, str) or not _DATACENTER.fullmatch(self.datacenter)
        ):
            raise ConfigurationError(
                "datacenter must be a Consul datacenter name (letters, digits, '-' and '_') or None, "
                f"got {self.datacenter!r}"
            )
        object.__setattr__(self, "timeout", check_range("timeout", self.timeout, 0.1, 300.0))
        if self.token is not None:
            problem = _token_problem(self.token)
            if problem:
                raise ConfigurationError(f"token {problem}")

    @property
    def address(self) -> str:
        """``scheme://host:port``, an IPv6 host in brackets: what a URL to the agent starts with."""
        return f"{self.scheme}://{url_host(self.host)}:{self.port}"

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
            scheme, values["host"], values["port"] = parse_address(address, "address")
        elif env.get("CONSUL_HTTP_ADDR"):
            scheme, values["host"], values["port"] = parse_address(env["CONSUL_HTTP_ADDR"])
        else:
            scheme = ""
        if not scheme and env.get("CONSUL_HTTP_SSL"):
            scheme = "https" if _flag("CONSUL_HTTP_SSL", env["CONSUL_HTTP_SSL"]) else "http"
        if scheme:
            values["scheme"] = scheme
        # Surrounding whitespace (a token file's trailing newline) is dropped, as the consul CLI does;
        # anything else that cannot go into an HTTP header is refused, without printing the token.
        if env.get("CONSUL_HTTP_TOKEN"):
            values["token"] = env["CONSUL_HTTP_TOKEN"].strip() or None
            problem = _token_problem(values["token"] or "")
            if problem:
                raise ConfigurationError(f"CONSUL_HTTP_TOKEN {problem}")
        elif env.get("CONSUL_HTTP_TOKEN_FILE"):
            path = env["CONSUL_HTTP_TOKEN_FILE"]
            try:
                with open(path, encoding="utf-8") as handle:
                    values["token"] = handle.read().strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                cause = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
                raise ConfigurationError(f"CONSUL_HTTP_TOKEN_FILE={path} cannot be read: {cause or exc}") from exc
            problem = _token_problem(values["token"] or "")
            if problem:
                raise ConfigurationError(f"the token in CONSUL_HTTP_TOKEN_FILE={path} {problem}")
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


#: A lock-delay must outlast the local lease by at least this much (see :class:`LeaseSpec`): room for
#: the election thread's own lateness in firing a token whose lease ran out on a busy host.
LOCK_DELAY_SAFETY = 0.5
#: The longest local lease: one that the longest lock-delay Consul allows still outlasts.
LEASE_MAX = LOCK_DELAY_MAX - LOCK_DELAY_SAFETY
#: The shortest health-check TTL of fast failover.
CHECK_TTL_MIN = 1.0


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class LeaseSpec:
    """How long a session lives, how long one renewal proves leadership here, and what protects its locks.

    ``ttl``: the session TTL, 10..86400 s (Consul's limits): how long Consul keeps the session, and the
    keys of a crashed holder, without renewals.

    ``margin``: the local *lease* is ``ttl - margin`` seconds (at most :data:`LEASE_MAX`, 59.5 s) from the
    moment the last successful renewal was *sent*. Past it the process treats leadership as lost: stop
    tokens fire and bodies are no longer started. Consul cannot expire the session before ``ttl`` after
    it received that renewal, so the token fires at least ``margin`` seconds before Consul could hand
    the lock to anyone else through expiry. ``0 < margin < 2/3 * ttl``; default ``max(1, ttl/5)``. The
    session is renewed every ``ttl / 3``, and at least twice per lease.

    ``check_ttl`` (fast failover, off unless set): the session is also linked to a TTL health check of
    this process on its agent, fed every ``check_ttl / 4``; when the process stops feeding it (a crash),
    Consul invalidates the session ``check_ttl`` later instead of after up to ``2 x ttl``. The lease then
    also ends ``3/4 x check_ttl`` after the last successful feed was sent (before the check can go
    critical), and is never longer than that after the last renewal either: a feed proves the check,
    not the session, and Consul may end the session at any moment (see ``lock_delay``), so renewals
    come at least twice per lease. ``1 <= check_ttl <= ttl / 2``.

    ``lock_delay``: after Consul invalidates the session, nobody may take its keys for this long. Consul
    can end a session *at once*, whatever its TTL: when it deregisters the session's node (its agent left
    the cluster gracefully, or an operator ran ``consul force-leave``). The holder may not hear of it (its
    agent is the one going away), and then only its lease ends its term: up to ``lease`` seconds after the
    last renewal, which the invalidation may have followed at once. So the lock-delay must outlast the
    lease: ``lock_delay >= lease + 0.5`` (:attr:`min_lock_delay`; that is why the lease is capped), up to
    Consul's 60 s. A smaller value is refused. Default: 15 s, or :attr:`min_lock_delay` when more is
    needed; with ``check_ttl``, :attr:`min_lock_delay` (fast failover wants the smallest safe one).
    """

    ttl: float = DEFAULT_TTL
    lock_delay: float | None = None
    margin: float | None = None
    check_ttl: float | None = None
    #: Which of lock_delay and margin were given rather than derived (not part of equality: two specs
    #: with the same values share one session).
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        ttl = check_range("ttl", self.ttl, TTL_MIN, TTL_MAX)
        object.__setattr__(self, "ttl", ttl)
        given = set(self.given)
        if self.margin is None:
            margin = max(1.0, ttl / 5)
        else:
            margin = _number("margin", self.margin)
            given.add("margin")
        limit = ttl * 2 / 3
        if not 0 < margin < limit:
            raise ConfigurationError(
                f"margin must be greater than 0 and less than 2/3 of ttl so that the local lease "
                f"(ttl - margin) outlasts one renewal interval (ttl / 3): for ttl={ttl:g} the allowed "
                f"range is 0 < margin < {limit:g} seconds, got {self.margin!r}"
            )
        object.__setattr__(self, "margin", margin)
        check_ttl = self.check_ttl
        if check_ttl is not None:
            check_ttl = _number("check_ttl", check_ttl)
            if not CHECK_TTL_MIN <= check_ttl <= ttl / 2:
                raise ConfigurationError(
                    f"check_ttl must be between {CHECK_TTL_MIN:g} and {ttl / 2:g} seconds (half the ttl: the "
                    f"session's own TTL stays the backstop) for ttl={ttl:g}, got {self.check_ttl!r}"
                )
            object.__setattr__(self, "check_ttl", check_ttl)
        needed = self.lease + LOCK_DELAY_SAFETY
        if self.lock_delay is None:
            lock_delay = needed if check_ttl is not None else max(DEFAULT_LOCK_DELAY, needed)
        else:
            lock_delay = check_range("lock_delay", self.lock_delay, LOCK_DELAY_MIN, LOCK_DELAY_MAX)
            given.add("lock_delay")
            if lock_delay < needed:
                fast = f" and check_ttl={check_ttl:g}" if check_ttl is not None else ""
                raise ConfigurationError(
                    f"lock_delay must be between {_fmt(needed)} and {LOCK_DELAY_MAX:g} seconds for ttl={ttl:g}, "
                    f"margin={margin:g}{fast}, got {self.lock_delay!r}: Consul ends a session at once when it "
                    "deregisters the session's node (an agent leaving, consul force-leave), and then only "
                    f"the lock-delay keeps another process from starting before this one's local lease "
                    f"({_fmt(self.lease)}s) ran out"
                )
        object.__setattr__(self, "lock_delay", lock_delay)
        object.__setattr__(self, "given", frozenset(given))

    @property
    def check_lease(self) -> float | None:
        """With ``check_ttl``: how long one successful feed of the check proves leadership (3/4 of it)."""
        return None if self.check_ttl is None else self.check_ttl * 3 / 4

    @property
    def check_interval(self) -> float | None:
        """With ``check_ttl``: how often the check is fed (three feeds per check lease)."""
        return None if self.check_ttl is None else self.check_ttl / 4

    @property
    def lease(self) -> float:
        """Seconds of leadership a successful renewal (and, in fast mode, feed) buys, from when it was sent."""
        assert self.margin is not None
        lease = min(self.ttl - self.margin, LEASE_MAX)
        check = self.check_lease
        return lease if check is None else min(lease, check)

    @property
    def renew_interval(self) -> float:
        """``ttl / 3``, and at least twice per lease."""
        return min(self.ttl / 3, self.lease / 2)

    @property
    def min_lock_delay(self) -> float:
        """The smallest lock-delay that keeps the stop token ahead of any takeover (see the class docstring)."""
        return self.lease + LOCK_DELAY_SAFETY

    def derive(self, overrides: LeaseOverrides) -> LeaseSpec:
        """This spec (the process defaults) with ``overrides`` applied.

        A ttl of its own gets a margin of its own (a margin is a part of its ttl) unless one is given
        with it; a lock-delay the process settings gave (rather than derived) stays, and must fit; the
        process's check_ttl stays unless the key gives its own.
        """
        if overrides.empty:
            return self
        margin = overrides.margin
        if margin is None and (overrides.ttl is None or overrides.ttl == self.ttl):
            margin = self.margin
        lock_delay = overrides.lock_delay
        if lock_delay is None and "lock_delay" in self.given:
            lock_delay = self.lock_delay
        check_ttl = overrides.check_ttl if overrides.check_ttl is not None else self.check_ttl
        try:
            return LeaseSpec(
                ttl=self.ttl if overrides.ttl is None else overrides.ttl,
                lock_delay=lock_delay,
                margin=margin,
                check_ttl=check_ttl,
            )
        except ConfigurationError as exc:
            raise ConfigurationError(overrides.rename(str(exc))) from None


@dataclass(frozen=True)
class LeaseOverrides:
    """Per-key changes to the process's lease settings, each checked on its own when made.

    Every entry point (``@leader_only``, the APScheduler store, ``singleton run``, the Django command, the
    Go-compatible function, the Celery scheduler) builds one with :meth:`checked`, under the names its
    user wrote (``--ttl``, ``session_ttl``), so an error names what the user typed. How the values relate
    to each other and to the process defaults is checked by :meth:`LeaseSpec.derive`, the one place that
    knows the rules; when ``ttl`` is given, that happens at once.
    """

    ttl: float | None = None
    lock_delay: float | None = None
    margin: float | None = None
    check_ttl: float | None = None
    names: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return self.ttl is None and self.lock_delay is None and self.margin is None and self.check_ttl is None

    def rename(self, message: str) -> str:
        """``message`` with each setting's name replaced by what the user called it."""
        for name, shown in self.names:
            message = re.sub(rf"\b{name}\b", shown, message)
        return message

    @classmethod
    def checked(
        cls,
        *,
        ttl: object = None,
        lock_delay: object = None,
        margin: object = None,
        check_ttl: object = None,
        names: Mapping[str, str] | None = None,
    ) -> LeaseOverrides:
        """The overrides as numbers within their ranges; with ``ttl``, checked together too.

        ``margin`` is a part of a ttl, so it needs ``ttl`` in the same place. A ``lock_delay`` or a
        ``check_ttl`` given without ``ttl`` is checked against the lease when the key is registered.

        :raises ConfigurationError: naming the setting as ``names`` maps it, with its allowed range.
        """
        shown = tuple((names or {}).items())
        probe = cls(names=shown)
        try:
            checked_ttl = None if ttl is None else check_range("ttl", ttl, TTL_MIN, TTL_MAX)
            checked_delay = (
                None if lock_delay is None else check_range("lock_delay", lock_delay, LOCK_DELAY_MIN, LOCK_DELAY_MAX)
            )
            checked_margin = None if margin is None else _number("margin", margin)
            checked_check = (
                None if check_ttl is None else check_range("check_ttl", check_ttl, CHECK_TTL_MIN, TTL_MAX / 2)
            )
            if checked_margin is not None and checked_ttl is None:
                raise ConfigurationError(
                    f"margin={margin!r} needs ttl in the same place: the margin is a part of the ttl "
                    "(give both, or neither)"
                )
            overrides = cls(checked_ttl, checked_delay, checked_margin, checked_check, shown)
            if checked_ttl is not None:
                LeaseSpec(ttl=checked_ttl, lock_delay=checked_delay, margin=checked_margin, check_ttl=checked_check)
        except ConfigurationError as exc:
            raise ConfigurationError(probe.rename(str(exc))) from None
        return overrides


#: The longest identity or session name, in characters.
NAME_MAX = 512


def _check_name(name: str, value: object) -> None:
    """The identity (a key's value, the session's name) or the session name: None or one line of text.

    Operators read both in ``consul kv get``, ``singleton status`` and logs: a newline or an escape
    sequence there would let a process pass for another one, or write to the operator's terminal.
    """
    if value is None:
        return
    if not isinstance(value, str) or not 0 < len(value) <= NAME_MAX:
        raise ConfigurationError(
            f"{name} must be text of 1 to {NAME_MAX} characters, such as 'web-1:4242', got {value!r}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name} must be valid Unicode text (it is sent as UTF-8), got {value!r}") from None
    if not value.isprintable():
        raise ConfigurationError(
            f"{name} must be printable text on one line (no newline, control or formatting characters), got {value!r}"
        )


def require_settings(value: object, where: str = "configure()") -> Settings:
    """``value`` if it is a :class:`Settings`; otherwise a ConfigurationError that says what to pass."""
    if isinstance(value, Settings):
        return value
    if isinstance(value, ConsulSettings):
        raise ConfigurationError(
            f"{where} takes a Settings, got a ConsulSettings: pass {where[:-1]}consul=...) "
            "or Settings(consul=...) to use it"
        )
    if isinstance(value, LeaseSpec):
        raise ConfigurationError(f"{where} takes a Settings, got a LeaseSpec: pass {where[:-1]}lease=...)")
    raise ConfigurationError(f"{where} takes a Settings or keyword settings (address=..., ttl=..., ...), got {value!r}")


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
    #: Hand the keys over on SIGTERM when its action is still Python's default (see ``singleton._signals``).
    handle_sigterm: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.consul, ConsulSettings):
            raise ConfigurationError(
                f"consul must be a ConsulSettings (or give address=, token=, ... instead), got {self.consul!r}"
            )
        if not isinstance(self.lease, LeaseSpec):
            raise ConfigurationError(
                f"lease must be a LeaseSpec (or give ttl=, lock_delay=, margin=), got {self.lease!r}"
            )
        if not isinstance(self.backend, str):
            raise ConfigurationError(
                f"backend must be 'consul', 'memory://' or 'file:///directory', got {self.backend!r}"
            )
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
        for name in ("identity", "session_name"):
            _check_name(name, getattr(self, name))
        if not isinstance(self.handle_sigterm, bool):
            raise ConfigurationError(f"handle_sigterm must be True or False, got {self.handle_sigterm!r}")

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
        self,
        ttl: float | None = None,
        lock_delay: float | None = None,
        margin: float | None = None,
        check_ttl: float | None = None,
    ) -> LeaseSpec:
        """The process defaults with any of the lease settings overridden (see LeaseSpec.derive)."""
        overrides = LeaseOverrides.checked(ttl=ttl, lock_delay=lock_delay, margin=margin, check_ttl=check_ttl)
        return self.lease.derive(overrides)

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
        lease_names = {"ttl", "lock_delay", "margin", "check_ttl"}
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
        if env.get("SINGLETON_HANDLE_SIGTERM"):
            values["handle_sigterm"] = _flag("SINGLETON_HANDLE_SIGTERM", env["SINGLETON_HANDLE_SIGTERM"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "consul" not in values:
            values["consul"] = ConsulSettings.from_env(env, **consul_overrides)
        if "lease" not in values:
            values["lease"] = LeaseSpec(**lease_values)
        return cls(**values)
