"""Keys and key prefixes: refused when Consul would store them under another name, kept exact otherwise.

Consul's HTTP server cleans the URL path before the KV endpoint sees it, so ``a/./b`` is stored as
``a/b`` and ``a/../b`` as ``b``: the holder then watches a key nobody writes, "loses" it at once and
acquires again, hundreds of times a second, and the key escapes its prefix. The first test shows the
rewriting on a real agent; the others show that every key the rules accept comes back unchanged.
"""

from __future__ import annotations

import time
import uuid

import pytest

from singleton import ConfigurationError, Elector, LeaseSpec, Settings, leader_only
from singleton.backends.consul import ConsulBackend
from singleton.config import KEY_MAX_BYTES, ConsulSettings, validate_key
from singleton.errors import BackendError

#: Keys Consul (or a URL on the way) would turn into another key, and the rule that refuses each.
REWRITTEN = [
    ("a/./b", "'.' or '..' segment"),
    ("a/../b", "'.' or '..' segment"),
    ("..", "'.' or '..' segment"),
    (".", "'.' or '..' segment"),
    ("a//b", "empty segment"),
    ("a/", "must not end with '/'"),
    ("/a", "must not start with '/'"),
    ("a?b", "'?'"),
    ("a#b", "'#'"),
    ("a%2e%2e", "'%'"),
    ("a\\b", "'\\\\'"),
    ("a\udcffb", "lone surrogate"),  # what os.environ gives for bytes that are not UTF-8
    ("a\u202eb", "unprintable"),  # right-to-left override: looks like another key on a terminal
    ("tab\there", "whitespace"),
    ("x" * (KEY_MAX_BYTES + 1), f"at most {KEY_MAX_BYTES} bytes"),
    ("é" * (KEY_MAX_BYTES // 2 + 1), f"at most {KEY_MAX_BYTES} bytes"),  # bytes, not characters
]

#: Keys the rules accept although they look odd: each must come back from Consul exactly as written.
ODD_BUT_EXACT = [
    "a.b/.hidden/..x/x../...",
    "tests.test_keys.test.<locals>.job",  # the default key of a nested function
    "ünïcødé/日本/job",
    "a:b@c;d=e&f+g,h!i$j'k\"l(m)n*o~p|q^r`s[t]u{v}w<x>y",
    "-/_/~",
]


@pytest.mark.parametrize(("key", "rule"), REWRITTEN)
def test_keys_consul_would_store_under_another_name_are_refused(key: str, rule: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^key ") as caught:
        validate_key(key)
    assert rule in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value)) < 400, "a long key is shortened in the message"


@pytest.mark.parametrize("key", ODD_BUT_EXACT)
def test_odd_keys_that_stay_the_same_are_accepted(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("a//", "one '/'"),
        ("a/./", "'.' or '..' segment"),
        ("../x/", "'.' or '..' segment"),
        ("a?/", "'?'"),
        (7, "string"),
    ],
)
def test_bad_key_prefixes_are_refused_where_the_settings_are_made(prefix: object, rule: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^key_prefix ") as caught:
        Settings(key_prefix=prefix)  # type: ignore[arg-type]
    assert rule in str(caught.value)
    if isinstance(prefix, str):
        with pytest.raises(ConfigurationError, match="key_prefix"):
            Settings.from_env({"SINGLETON_KEY_PREFIX": prefix})


def test_a_prefix_always_ends_with_one_slash_and_the_whole_key_is_bounded() -> None:
    assert Settings(key_prefix="myapp").key_prefix == "myapp/"
    assert Settings(key_prefix="myapp/jobs/").key_prefix == "myapp/jobs/"
    settings = Settings(key_prefix="p" * 500)
    assert settings.full_key("k" * 11) == "p" * 500 + "/" + "k" * 11
    with pytest.raises(ConfigurationError, match=f"key_prefix \\+ key must be at most {KEY_MAX_BYTES} bytes"):
        settings.full_key("k" * 12)
    # The file backend names files after the percent-encoded key: 255 bytes at most.
    files = Settings(backend="file:///tmp/locks", key_prefix="app")
    assert files.full_key("k" * 100)
    with pytest.raises(ConfigurationError, match="percent-encoded with the file backend"):
        files.full_key("a/" * 99 + "a")


def test_a_bad_key_fails_the_decoration_not_a_later_call() -> None:
    with pytest.raises(ConfigurationError, match=r"key must not contain a '\.' or '\.\.' segment"):

        @leader_only(key="jobs/../nightly")
        def nightly() -> None: ...


# -- on a real agent ------------------------------------------------------------------------------


@pytest.mark.consul
def test_consul_stores_dot_segments_and_empty_segments_under_another_name(
    consul_backend: ConsulBackend, key_prefix: str
) -> None:
    """Why the rules exist: what the refused keys become on a real agent (the backend itself does not check).

    The acquisition goes through /v1/txn, which stores the name as given; a read or a watch goes through
    the URL, which Consul cleans (a 301 to ``a/b``): the holder would never see its own lock.
    """
    session = consul_backend.create_session(name="keys:1", ttl=10, lock_delay=0)
    try:
        for key in ("a/./b", "c//d", "e/../f"):
            acquisition = consul_backend.acquire(key_prefix + key, session, b"keys:1")
            assert acquisition.acquired
            # Our client follows no redirect: the 301 to another key is an error, never a silent read of it.
            with pytest.raises(BackendError, match="301"):
                consul_backend.read(key_prefix + key)
        outside = f"outside-{uuid.uuid4().hex}"
        assert consul_backend.acquire(outside, session, b"keys:1").acquired
        with pytest.raises(BackendError, match="301"):  # Consul sends the read outside the prefix
            consul_backend.read(key_prefix + "../" + outside)
    finally:
        consul_backend.destroy_session(session)


@pytest.mark.consul
def test_every_accepted_key_round_trips_unchanged_through_consul(
    consul_settings: ConsulSettings, consul_backend: ConsulBackend, key_prefix: str
) -> None:
    backend = consul_backend
    longest = key_prefix + "x" * (KEY_MAX_BYTES - len(key_prefix.encode()))
    keys = [key_prefix + key for key in ODD_BUT_EXACT] + [longest]
    session = backend.create_session(name="keys:1", ttl=10, lock_delay=0)
    try:
        for key in keys:
            Settings().full_key(key)  # accepted by the rules, prefix included
            acquired = backend.acquire(key, session, b"keys:1")
            assert acquired.acquired, key
            assert acquired.entry is not None
            assert acquired.entry.key == key
            _, entry = backend.read(key)
            assert entry is not None
            assert entry.key == key
        assert [entry.key for entry in backend.list_keys(key_prefix)] == sorted(keys)
        _, watched = backend.watch_prefix(key_prefix, 0, 1)
        assert sorted(entry.key for entry in watched) == sorted(keys)
        assert {entry.session for entry in watched} == {session}
    finally:
        backend.destroy_session(session)


@pytest.mark.consul
def test_a_holder_of_an_odd_key_under_a_prefix_keeps_it(consul_settings: ConsulSettings, key_prefix: str) -> None:
    """With a prefix watch, the holder sees its own key as written: it leads once and stays leader."""
    settings = Settings(consul=consul_settings, key_prefix=key_prefix, lease=LeaseSpec(ttl=10))
    elector = Elector(settings)
    try:
        election = elector.register(ODD_BUT_EXACT[1])
        assert election.wait_for_leadership(10)
        token = election.token
        assert token is not None
        time.sleep(1.5)  # several watch answers later
        assert election.token is token, election.status()
        assert not token.stopped
    finally:
        elector.close(grace=0)
