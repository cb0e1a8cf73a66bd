"""Settings: arguments first, then the Consul CLI's environment; bad values named with their range."""

from __future__ import annotations

from pathlib import Path

import pytest

import singleton
from singleton.config import ConsulSettings, LeaseOverrides, LeaseSpec, Settings, parse_address, validate_key
from singleton.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8500", ("", "127.0.0.1", 8500)),
        ("consul.service:9500", ("", "consul.service", 9500)),
        ("http://10.0.0.5:8500", ("http", "10.0.0.5", 8500)),
        ("https://consul.example:8501", ("https", "consul.example", 8501)),
        # Without a port, the scheme's own, as the consul CLI (Go's HTTP client) does.
        ("https://consul.example", ("https", "consul.example", 443)),
        ("localhost", ("", "localhost", 80)),
        ("[::1]:8500", ("", "::1", 8500)),
        ("http://[::1]:8500", ("http", "::1", 8500)),
        ("https://[2001:db8::7]", ("https", "2001:db8::7", 443)),
        ("[fe80::1%25eth0]:8500", ("", "fe80::1%eth0", 8500)),
        ("HTTP://Consul_1.internal:8500/", ("http", "consul_1.internal", 8500)),
    ],
)
def test_parse_address_accepts_the_cli_forms(text: str, expected: tuple[str, str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "must be host:port"),
        ("   ", "must be host:port"),
        ("unix:///tmp/consul.sock", "unix sockets are not supported"),
        ("host:notaport", "port must be a number from 1 to 65535"),
        ("host:99999", "port must be a number from 1 to 65535"),
        ("host:0", "port must be a number from 1 to 65535"),
        ("http://h:1/path", "must be host:port"),
        ("user:pw@h:1", "must be host:port"),
        ("::1", "put an IPv6 address in brackets, as in [::1]:8500"),
        ("::::", "put an IPv6 address in brackets"),
        ("[nope]:8500", "must be host:port"),
        ("my host:8500", "must be a host name"),
        ("-h-:8500", "must be a host name"),
        ("a..b:8500", "must be a host name"),
    ],
)
def test_unparseable_address_names_the_variable(text: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match="CONSUL_HTTP_ADDR") as caught:
        parse_address(text)
    assert words in str(caught.value)


def test_an_ipv6_host_is_kept_bare_and_bracketed_in_the_address() -> None:
    settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "[::1]:8500"})
    assert (settings.scheme, settings.host, settings.port) == ("http", "::1", 8500)
    assert settings.address == "http://[::1]:8500"
    assert ConsulSettings(host="[::1]").host == "::1", "brackets given with the host are dropped"
    assert ConsulSettings(host="fe80::1%eth0", port=1).address == "http://[fe80::1%25eth0]:1"
    assert ConsulSettings(host="consul.internal", port=1, scheme="https").address == "https://consul.internal:1"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"host": "my host"}, "host must be a host name"),
        ({"host": ""}, "host must be a host name"),
        ({"host": "::zz"}, "host is not an IPv6 address"),
        ({"host": 10}, "host must be a host name or an IP address"),
        ({"port": True}, "port must be a whole number from 1 to 65535"),
        ({"port": "8500"}, "port must be a whole number"),
        ({"port": 0}, "port must be a whole number"),
        ({"scheme": "ftp"}, "scheme must be 'http' or 'https'"),
        ({"verify": "false"}, "verify must be True or False (a CA bundle to verify with goes in ca_cert)"),
        ({"verify": 0}, "verify must be True or False"),
        ({"ca_cert": ""}, "ca_cert must be the path of a file"),
        ({"ca_cert": 5}, "ca_cert must be the path of a file"),
        ({"client_cert": "/c.pem", "client_key": "/k\n.pem"}, "client_key must be the path of a file"),
        ({"client_cert": "/c.pem"}, "client_cert and client_key"),
        ({"datacenter": "dc 1"}, "datacenter must be a Consul datacenter name"),
        ({"datacenter": ""}, "datacenter must be a Consul datacenter name"),
        ({"timeout": 0}, "timeout must be between 0.1 and 300"),
    ],
)
def test_every_consul_field_is_checked_where_it_is_built(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ConsulSettings(**fields)  # type: ignore[arg-type]
    assert words in str(caught.value)
    # The same through configure()'s path, where the names are the same.
    with pytest.raises(ConfigurationError):
        Settings.from_env({}, **fields)


def test_paths_may_be_pathlike() -> None:
    assert ConsulSettings(ca_cert=Path("/etc/ca.pem")).ca_cert == "/etc/ca.pem"  # type: ignore[arg-type]


def test_from_env_reads_the_consul_cli_variables(tmp_path: object) -> None:
    env = {
        "CONSUL_HTTP_ADDR": "https://consul.internal:8501",
        "CONSUL_HTTP_TOKEN": "secret-token",
        "CONSUL_CACERT": "/etc/ca.pem",
        "CONSUL_CLIENT_CERT": "/etc/c.pem",
        "CONSUL_CLIENT_KEY": "/etc/c.key",
        "CONSUL_HTTP_SSL_VERIFY": "false",
    }
    s = ConsulSettings.from_env(env)
    assert (s.scheme, s.host, s.port) == ("https", "consul.internal", 8501)
    assert s.token == "secret-token"
    assert (s.ca_cert, s.client_cert, s.client_key, s.verify) == ("/etc/ca.pem", "/etc/c.pem", "/etc/c.key", False)
    assert "secret-token" not in repr(s)
    assert "<hidden>" in repr(s)


def test_arguments_win_over_the_environment() -> None:
    env = {"CONSUL_HTTP_ADDR": "10.1.1.1:8500", "CONSUL_HTTP_TOKEN": "from-env"}
    s = ConsulSettings.from_env(env, address="127.0.0.1:9999", token="from-arg")
    assert (s.host, s.port, s.token) == ("127.0.0.1", 9999, "from-arg")


def test_token_file_is_read_when_no_token_variable(tmp_path: pytest.TempPathFactory) -> None:
    path = f"{tmp_path}/token"
    with open(path, "w") as f:
        f.write("file-token\n")
    assert ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": path}).token == "file-token"
    with pytest.raises(ConfigurationError, match="CONSUL_HTTP_TOKEN_FILE"):
        ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": f"{tmp_path}/nope"})


def test_ssl_variable_selects_https_when_address_has_no_scheme() -> None:
    assert ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "h:8501", "CONSUL_HTTP_SSL": "true"}).scheme == "https"
    with pytest.raises(ConfigurationError, match="CONSUL_HTTP_SSL_VERIFY must be true or false"):
        ConsulSettings.from_env({"CONSUL_HTTP_SSL_VERIFY": "maybe"})


def test_client_cert_needs_its_key() -> None:
    with pytest.raises(ConfigurationError, match="client_cert and client_key"):
        ConsulSettings.from_env({"CONSUL_CLIENT_CERT": "/c.pem"})


@pytest.mark.parametrize("ttl", [0, 9.9, 86401, -5, float("nan"), "soon"])
def test_ttl_outside_consuls_limits_is_refused(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl must be"):
        LeaseSpec(ttl=ttl)  # type: ignore[arg-type]


def test_ttl_error_states_the_range() -> None:
    with pytest.raises(ConfigurationError, match=r"ttl must be between 10 and 86400 seconds, got 5"):
        LeaseSpec(ttl=5)


@pytest.mark.parametrize("delay", [-1, 60.5, 120])
def test_lock_delay_outside_0_to_60_is_refused(delay: float) -> None:
    with pytest.raises(ConfigurationError, match=r"lock_delay must be between 0 and 60 seconds"):
        LeaseSpec(lock_delay=delay)


@pytest.mark.parametrize("margin", [0, -1, 10, 12])
def test_margin_that_leaves_no_lease_is_refused(margin: float) -> None:
    with pytest.raises(ConfigurationError, match=r"margin must be .* 0 < margin < 10 seconds"):
        LeaseSpec(ttl=15, margin=margin)


def test_lease_defaults() -> None:
    spec = LeaseSpec()
    assert (spec.ttl, spec.lock_delay, spec.margin) == (15.0, 15.0, 3.0)
    assert spec.renew_interval == 5.0
    assert spec.lease == 12.0
    assert LeaseSpec(ttl=10).margin == 2.0
    assert LeaseSpec(ttl=60).lease == 48.0
    assert LeaseSpec(ttl=3600).lease == 59.5, "capped: the longest lock-delay (60 s) must outlast it"
    assert LeaseSpec(ttl=3600).renew_interval == 29.75, "at least twice per lease"


def test_the_lock_delay_must_outlast_the_lease() -> None:
    assert LeaseSpec(ttl=10).min_lock_delay == 8.5
    assert LeaseSpec(ttl=10, lock_delay=8.5).lock_delay == 8.5
    with pytest.raises(
        ConfigurationError, match=r"lock_delay must be between 8.5 and 60 seconds for ttl=10, margin=2, got 1"
    ):
        LeaseSpec(ttl=10, lock_delay=1)
    with pytest.raises(ConfigurationError, match="deregisters the session's node"):
        LeaseSpec(ttl=15, lock_delay=12)


def test_the_default_lock_delay_grows_with_the_lease() -> None:
    assert LeaseSpec(ttl=10).lock_delay == 15.0, "Consul's default when it is enough"
    assert LeaseSpec(ttl=30).lock_delay == 24.5, "the lease (24 s) plus 0.5 s when 15 s is not"
    assert LeaseSpec(ttl=86400).lock_delay == 60.0


@pytest.mark.parametrize("key", ["", "/", "/reports/nightly", "has space", "tab\there", 42])
def test_bad_keys_are_refused(key: object) -> None:
    with pytest.raises(ConfigurationError, match="key must"):
        validate_key(key)


def test_settings_from_env_and_prefix() -> None:
    env = {"SINGLETON_KEY_PREFIX": "myapp", "SINGLETON_TTL": "30", "CONSUL_HTTP_ADDR": "127.0.0.1:1234"}
    s = Settings.from_env(env)
    assert s.key_prefix == "myapp/"
    assert s.full_key("reports/nightly") == "myapp/reports/nightly"
    assert s.lease.ttl == 30.0
    assert s.consul.port == 1234
    assert Settings.from_env(env, ttl=20).lease.ttl == 20.0


def test_settings_refuse_unknown_names_and_backends() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.from_env({}, tll=10)
    with pytest.raises(ConfigurationError, match="backend must be"):
        Settings(backend="zookeeper://x")
    with pytest.raises(ConfigurationError, match="absolute directory"):
        Settings(backend="file://relative")
    with pytest.raises(ConfigurationError, match=r"SINGLETON_TTL|ttl must be"):
        Settings.from_env({"SINGLETON_TTL": "5"})


def test_lease_for_overrides_keep_the_process_defaults() -> None:
    s = Settings(lease=LeaseSpec(ttl=20, lock_delay=17, margin=4))
    assert s.lease_for() is s.lease
    assert s.lease_for(lock_delay=30) == LeaseSpec(ttl=20, lock_delay=30, margin=4)
    # A ttl of its own gets its own margin, but a lock-delay the process gave stays, and must fit.
    assert s.lease_for(ttl=15) == LeaseSpec(ttl=15, lock_delay=17)
    with pytest.raises(ConfigurationError, match=r"lock_delay must be between 48.5 and 60 seconds for ttl=60"):
        s.lease_for(ttl=60)
    derived = Settings(lease=LeaseSpec(ttl=20, margin=4))  # the lock-delay derived, not given
    assert derived.lease_for(ttl=60) == LeaseSpec(ttl=60, lock_delay=48.5)


def test_lease_overrides_are_checked_where_they_are_made() -> None:
    with pytest.raises(ConfigurationError, match=r"--ttl must be between 10 and 86400 seconds, got 5"):
        LeaseOverrides.checked(ttl=5, names={"ttl": "--ttl"})
    with pytest.raises(ConfigurationError, match="margin=2 needs ttl"):
        LeaseOverrides.checked(margin=2)
    with pytest.raises(ConfigurationError, match=r"--lock-delay must be between 8.5 and 60 .* for --ttl=10"):
        LeaseOverrides.checked(ttl=10, lock_delay=3, names={"ttl": "--ttl", "lock_delay": "--lock-delay"})
    alone = LeaseOverrides.checked(lock_delay=3)  # its fit with the process's ttl is checked at registration
    with pytest.raises(ConfigurationError, match=r"lock_delay must be between 12\.5 and 60"):
        Settings().lease.derive(alone)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"identity": "web-1\nweb-2:1"}, "identity must be printable text on one line"),
        ({"identity": "\x1b]0;owned\x07"}, "identity must be printable text on one line"),
        ({"identity": "web\u202e1"}, "identity must be printable text on one line"),
        ({"identity": ""}, "identity must be text of 1 to 512 characters"),
        ({"identity": "x" * 513}, "identity must be text of 1 to 512 characters"),
        ({"identity": 42}, "identity must be text of 1 to 512 characters"),
        ({"identity": "web\udcff"}, "identity must be valid Unicode text"),
        ({"session_name": "a\rb"}, "session_name must be printable text on one line"),
        ({"consul": "127.0.0.1:8500"}, "consul must be a ConsulSettings (or give address=, token=, ... instead)"),
        ({"lease": 15}, "lease must be a LeaseSpec"),
        ({"backend": 5}, "backend must be 'consul', 'memory://' or 'file:///directory'"),
        ({"watch_wait": "long"}, "watch_wait must be a number of seconds"),
    ],
)
def test_every_settings_field_is_checked_where_it_is_built(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(**fields)  # type: ignore[arg-type]
    assert words in str(caught.value)


def test_identity_may_be_any_one_line_text() -> None:
    assert Settings(identity="web 1 (eu-west):4242").identity == "web 1 (eu-west):4242"
    assert Settings(session_name="ünïcode").session_name == "ünïcode"


def test_configure_refuses_consul_settings_at_once_and_says_what_to_pass() -> None:
    consul = ConsulSettings(host="consul.internal", port=8500)
    with pytest.raises(ConfigurationError, match=r"configure\(\) takes a Settings, got a ConsulSettings") as caught:
        singleton.configure(consul)  # type: ignore[arg-type]
    assert "configure(consul=...)" in str(caught.value)
    with pytest.raises(ConfigurationError, match="got a LeaseSpec"):
        singleton.configure(LeaseSpec())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="takes a Settings or keyword settings"):
        singleton.configure({"ttl": 20})  # type: ignore[arg-type]
    try:
        assert singleton.configure(consul=consul).consul is consul, "what the message says works"
        assert singleton.get_settings().consul is consul
    finally:
        singleton.shutdown()
