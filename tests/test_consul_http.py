"""The Consul backend's own HTTP client: hostile servers (tests/fake_agent.py), then real agents.

Against the fake server: deadlines, the size limit, answers that are not Consul's, broken keep-alive
connections, a backwards index, IPv6, and where the token may and may not go. Against real agents:
exact durations, one round trip per successful acquire, ACL and TLS failures in words that say what
to fix, and settings that refuse a token that cannot be sent.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from singleton import Elector, LeaseSpec, Settings
from singleton.backends._http import Answer
from singleton.backends.consul import ConsulBackend, go_duration
from singleton.config import ConsulSettings
from singleton.errors import AccessDenied, BackendError, BackendUnavailable, ConfigurationError
from singleton.testing import ConsulAgent, free_ports
from tests.fake_agent import CLOSE, RESET, FakeAgent, Reply, Request, answer, json_answer, trickle
from tests.helpers import acl_agent

ROOT = Path(__file__).resolve().parent.parent
KEY = "app/k"
SESSION = "5e55-1011"
TOKEN = "fe11ed-70ce2-5ecre7"


def _entry(**change: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "Key": KEY,
        "Value": base64.b64encode(b"host:1").decode(),
        "Flags": 0,
        "CreateIndex": 5,
        "ModifyIndex": 7,
        "LockIndex": 1,
        "Session": SESSION,
    }
    return {**entry, **change}


def kv(entries: list[dict[str, object]] | None = None, index: int = 7) -> bytes:
    return json_answer([_entry()] if entries is None else entries, X_Consul_Index=str(index))


def backend_for(agent: FakeAgent, **settings: Any) -> ConsulBackend:
    return ConsulBackend(ConsulSettings.from_env({}, address=agent.address, **settings))


# -- deadlines ----------------------------------------------------------------------------------------


def test_a_server_that_trickles_its_answer_is_cut_off_at_the_deadline() -> None:
    # One byte every 0.2 s: no single read ever waits a second, so only a total deadline ends it
    # (the whole answer would take over 40 s).
    with FakeAgent(lambda request: trickle(kv(), 0.2)) as agent, backend_for(agent, timeout=1) as backend:
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"did not answer reading key 'app/k' within 1s") as info:
            backend.read(KEY)
        assert time.monotonic() - began < 5
    assert "\n" not in str(info.value)


def test_a_blocking_query_gets_its_wait_plus_jitter_and_no_more() -> None:
    with FakeAgent(lambda request: agent.silence()) as agent, backend_for(agent, timeout=0.5) as backend:
        began = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"within 1\.5625s"):
            backend.watch(KEY, 42, wait=1)  # 0.5 + 1 + 1/16
        elapsed = time.monotonic() - began
    assert 1.4 < elapsed < 6, elapsed
    (request,) = agent.requests
    assert request.query == "index=42&wait=1s"


_BIG = 200 * 1024 * 1024
_RSS_CHILD = r"""
import json, sys
from singleton.backends.consul import ConsulBackend
from singleton.config import ConsulSettings
from singleton.errors import BackendError


def peak_kib():  # the process's peak resident set so far (Linux)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


backend = ConsulBackend(ConsulSettings.from_env({}, address=sys.argv[1], timeout=60))
before = peak_kib()
try:
    backend.list_keys("app/")
    message = "no error"
except BackendError as exc:
    message = str(exc)
print(json.dumps({"growth_mib": round((peak_kib() - before) / 1024, 1), "message": message}))
"""


def _huge(chunked: bool) -> Callable[[Request], Iterator[bytes]]:
    piece = b"x" * (1024 * 1024)

    def reply(request: Request) -> Iterator[bytes]:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {_BIG}"
        yield f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 9\r\n{framing}\r\n\r\n".encode()
        for _ in range(_BIG // len(piece)):
            yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        if chunked:
            yield b"0\r\n\r\n"

    return reply


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_200_mb_answer_is_refused_at_the_limit_and_memory_stays_low(chunked: bool) -> None:
    with FakeAgent(_huge(chunked)) as agent:
        result = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, agent.address], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "the limit of 67108864 bytes: refused" in report["message"], report
    print(f"RSS growth reading a 200 MB answer ({'chunked' if chunked else 'with Content-Length'}): {report}")
    # Read whole, the answer would take 200 MB and more; refused at its header it costs nothing, and
    # read up to the 64 MiB limit it costs that limit and little else.
    assert report["growth_mib"] < (100 if chunked else 16), report


# -- answers that are not Consul's ----------------------------------------------------------------------


_HTML = (
    b"<!DOCTYPE html><html><head><title>\x1b]0;owned\x07\x1b[2JWelcome to nginx!</title></head>"
    + b"<body>" * 400
    + b"</html>"
)
_HTML_ANSWER = answer(200, _HTML, "text/html")


def _calls(backend: ConsulBackend) -> dict[str, Callable[[], object]]:
    return {
        "read": lambda: backend.read(KEY),
        "watch": lambda: backend.watch(KEY, 3, 1),
        "watch_prefix": lambda: backend.watch_prefix("app/", 3, 1),
        "list_keys": lambda: backend.list_keys("app/"),
        "session_info": lambda: backend.session_info(SESSION),
        "renew": lambda: backend.renew_session(SESSION),
        "create": lambda: backend.create_session(name="n", ttl=10, lock_delay=1),
        "acquire": lambda: backend.acquire(KEY, SESSION, b"host:1"),
        "release": lambda: backend.release(KEY, SESSION, b"host:1"),
        "destroy": lambda: backend.destroy_session(SESSION),
    }


@pytest.mark.parametrize(
    ("reply", "calls"),
    [
        (json_answer({}, X_Consul_Index="7"), "*"),  # an empty object where Consul sends a list or fields
        (_HTML_ANSWER, "*"),  # a plain web server
        (answer(404, b"<h1>Not Found</h1>", "text/html"), "*"),
        (answer(404, b"not found", "text/plain"), ["read", "list_keys", "watch"]),  # no X-Consul-Index
        (json_answer([_entry()]), ["read", "watch", "list_keys", "watch_prefix"]),  # no X-Consul-Index
        (kv([_entry(Value="@@not base64@@")]), ["read", "list_keys"]),
        (kv([{"Value": 3}]), ["read", "list_keys", "watch_prefix"]),
        (kv([_entry(ModifyIndex="7")]), ["read"]),
        (json_answer([{"ID": "someone-else"}]), ["renew"]),  # a 200 that does not hold our session
        (json_answer({"Results": [{"KV": _entry(Session="other")}, {"KV": _entry(Session="other")}]}), ["acquire"]),
        (json_answer({"Results": None}, 409), ["acquire"]),
        (json_answer([{"Name": 1}]), ["session_info"]),
        (json_answer("yes"), ["release", "destroy"]),
        (b"SSH-2.0-OpenSSH_9.2\r\n", ["read", "acquire"]),  # not HTTP at all
    ],
    ids=[
        "empty-object",
        "html",
        "html-404",
        "404-without-index",
        "200-without-index",
        "value-not-base64",
        "entry-without-key",
        "index-not-a-number",
        "renew-other-session",
        "txn-other-session",
        "409-without-errors",
        "session-without-id",
        "not-a-bool",
        "not-http",
    ],
)
def test_an_answer_that_is_not_consuls_is_one_line_saying_so(reply: bytes, calls: str | list[str]) -> None:
    with FakeAgent(lambda request: reply) as agent, backend_for(agent, timeout=2, token=TOKEN) as backend:
        chosen = _calls(backend)
        for name in chosen if calls == "*" else calls:
            with pytest.raises(BackendError) as info:
                chosen[name]()
            message = str(info.value)
            assert "does not look like a Consul agent" in message, (name, message)
            assert not {"\n", "\x1b", "\x07"} & set(message), (name, message)
            assert len(message) < 260, (name, message)
            assert "<body>" not in message, (name, message)
            assert TOKEN not in message, (name, message)
            assert not isinstance(info.value, (BackendUnavailable, AccessDenied)), name


def test_an_index_that_goes_backwards_is_returned_as_it_is() -> None:
    with FakeAgent(lambda request: kv(index=3)) as agent, backend_for(agent) as backend:
        index, entry = backend.watch(KEY, 100, 1)
        prefix_index, entries = backend.watch_prefix("app/", 100, 1)
    assert (index, prefix_index) == (3, 3)
    assert entry is not None
    assert [e.key for e in entries] == [KEY]


# -- connections ----------------------------------------------------------------------------------------


def test_a_broken_keep_alive_connection_is_retried_once_for_a_read() -> None:
    def reply(request: Request) -> Reply:
        return RESET if (request.connection, request.number) == (1, 2) else kv()

    with FakeAgent(reply) as agent, backend_for(agent) as backend:
        assert backend.read(KEY)[1] is not None
        assert backend.read(KEY)[1] is not None  # reset on the kept-alive connection: retried on a new one
    assert [(r.connection, r.number) for r in agent.requests] == [(1, 1), (1, 2), (2, 1)]


def test_an_acquire_is_never_resent_on_a_broken_connection() -> None:
    def reply(request: Request) -> Reply:
        return RESET if request.path == "/v1/txn" else kv()

    with FakeAgent(reply) as agent, backend_for(agent) as backend:
        backend.read(KEY)  # the connection is now kept alive
        with pytest.raises(BackendUnavailable, match="acquiring key 'app/k': the connection was"):
            backend.acquire(KEY, SESSION, b"host:1")
    assert [r.path for r in agent.requests].count("/v1/txn") == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_before_anything_is_sent() -> None:
    txn = json_answer({"Results": [{"KV": _entry(Value=None)}, {"KV": _entry()}], "Errors": None})

    def reply(request: Request) -> Reply:
        return [txn if request.path == "/v1/txn" else kv(), CLOSE]  # answers, then hangs up

    with FakeAgent(reply) as agent, backend_for(agent) as backend:
        backend.read(KEY)
        time.sleep(0.2)  # the server's FIN has arrived
        won = backend.acquire(KEY, SESSION, b"host:1")
    assert won.acquired
    assert [(r.path, r.connection) for r in agent.requests] == [("/v1/kv/app/k", 1), ("/v1/txn", 2)]


def test_each_thread_keeps_one_connection_alive() -> None:
    with FakeAgent(lambda request: kv()) as agent, backend_for(agent) as backend:
        for _ in range(3):
            backend.read(KEY)
        other = threading.Thread(target=lambda: [backend.read(KEY) for _ in range(3)])
        other.start()
        other.join(10)
    assert agent.connections == 2
    assert len(agent.requests) == 6


def test_closing_the_backend_ends_a_blocking_query_in_another_thread_at_once() -> None:
    errors: list[BaseException] = []

    def watch(backend: ConsulBackend) -> None:
        try:
            backend.watch(KEY, 42, wait=60)
        except BackendUnavailable as exc:
            errors.append(exc)

    with FakeAgent(lambda request: agent.silence()) as agent:
        backend = backend_for(agent)
        watcher = threading.Thread(target=watch, args=(backend,))
        watcher.start()
        time.sleep(0.3)
        began = time.monotonic()
        backend.close()
        watcher.join(10)
        assert time.monotonic() - began < 3
    assert len(errors) == 1, errors
    assert len(agent.requests) == 1, "not retried on a closed backend"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_addresses_in_brackets_work() -> None:
    with FakeAgent(lambda request: kv(), host="::1") as agent:
        settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": f"[::1]:{agent.port}"})
        with ConsulBackend(settings) as backend:
            assert backend.description == f"consul at http://[::1]:{agent.port}"
            assert backend.read(KEY)[1] is not None
    assert agent.requests[0].headers["host"] == f"[::1]:{agent.port}"


def test_the_token_travels_in_the_header_only_and_never_into_a_message() -> None:
    echo = answer(500, f"rpc error: token {TOKEN} is broken".encode(), "text/plain")
    with FakeAgent(lambda request: echo) as agent, backend_for(agent, token=TOKEN) as backend:
        with pytest.raises(BackendUnavailable) as info:
            backend.read(KEY)
        with pytest.raises(BackendUnavailable):
            backend.release(KEY, SESSION, b"x")
    assert TOKEN not in str(info.value)
    assert "<hidden>" in str(info.value)
    assert TOKEN not in repr(backend._settings)
    for request in agent.requests:
        assert TOKEN not in request.target
        assert request.headers["x-consul-token"] == TOKEN


# -- through the engine and the command line ------------------------------------------------------------


def test_the_engine_and_status_say_one_line_to_a_server_that_is_not_consul(caplog: pytest.LogCaptureFixture) -> None:
    with FakeAgent(lambda request: json_answer({}, X_Consul_Index="1")) as agent:
        settings = ConsulSettings.from_env({}, address=agent.address, timeout=2)
        elector = Elector(Settings(consul=settings, identity="fake:1", lease=LeaseSpec(ttl=10)))
        try:
            election = elector.register(KEY)
            election.wait_settled(5)
            time.sleep(2)
            status = election.status()
            assert not election.is_leader
            assert "does not look like a Consul agent" in (status.reason or str(status.error)), status
        finally:
            elector.close(grace=0)
        engine_requests = len(agent.requests)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "SINGLETON_"))}
        result = subprocess.run(
            [sys.executable, "-m", "singleton", "status", KEY, "--address", agent.address],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
    assert engine_requests < 30, f"{engine_requests} requests in about 2 s: a busy loop"
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the logs"
    assert result.returncode == 69, result
    assert "does not look like a Consul agent" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# -- real agents ----------------------------------------------------------------------------------------


class CountingBackend(ConsulBackend):
    """Records every request the backend sends, as (method, path)."""

    def __init__(self, settings: ConsulSettings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[str, str]] = []

    def _request(self, method: str, path: str, **kwargs: Any) -> Answer:
        self.sent.append((method, path))
        return super()._request(method, path, **kwargs)


def test_durations_are_sent_exactly_and_rounded_up() -> None:
    assert [go_duration(s) for s in (15, 8.5, 0.1, 0.0001, 0, 10.25, 86400)] == [
        "15s",
        "8500ms",
        "100ms",
        "1ms",
        "0s",
        "10250ms",
        "86400s",
    ]


@pytest.mark.consul
def test_a_lock_delay_of_8_5_s_is_stored_as_8_5_s(
    consul_settings: ConsulSettings, consul_backend: ConsulBackend
) -> None:
    session = consul_backend.create_session(name="exact", ttl=10.5, lock_delay=8.5)
    try:
        info = consul_backend.session_info(session)
        assert info is not None
        assert (info.ttl, info.lock_delay) == (10.5, 8.5)
        with urllib.request.urlopen(f"{consul_settings.address}/v1/session/info/{session}", timeout=5) as response:
            (raw,) = json.loads(response.read())
        assert (raw["TTL"], raw["LockDelay"]) == ("10500ms", 8_500_000_000)
    finally:
        consul_backend.destroy_session(session)


@pytest.mark.consul
def test_an_acquire_is_one_round_trip_when_it_succeeds(consul_settings: ConsulSettings, key_prefix: str) -> None:
    key = key_prefix + "fence"
    with CountingBackend(consul_settings) as backend:
        mine = backend.create_session(name="mine", ttl=10, lock_delay=0)
        other = backend.create_session(name="other", ttl=10, lock_delay=0)
        backend.sent.clear()
        won = backend.acquire(key, mine, b"host:1", flags=99)
        assert backend.sent == [("PUT", "/v1/txn")]
        assert won.acquired
        assert won.entry is not None
        _, now = backend.read(key)
        assert now == won.entry, "the fence and the entry come with the acquire itself"
        backend.sent.clear()
        lost = backend.acquire(key, other, b"host:2")
        assert backend.sent == [("PUT", "/v1/txn"), ("GET", f"/v1/kv/{key}")], "a refusal reads who holds it"
        assert not lost.acquired
        assert lost.entry is not None
        assert lost.entry.session == mine
        backend.destroy_session(mine)
        backend.destroy_session(other)


@pytest.mark.consul
def test_an_unknown_token_is_named_as_such_and_never_shown(consul_binary: str, tmp_path: Path) -> None:
    agent = acl_agent(consul_binary, tmp_path / "acl")
    try:
        with ConsulBackend(agent.settings(token=TOKEN)) as backend:
            for name, call in _calls(backend).items():
                if name in ("watch", "watch_prefix"):
                    continue  # the same GET as read
                with pytest.raises(AccessDenied) as info:
                    call()
                message = str(info.value)
                assert "does not know the ACL token" in message, (name, message)
                assert "CONSUL_HTTP_TOKEN" in message, (name, message)
                assert TOKEN not in message, (name, message)
        with ConsulBackend(agent.settings(token="root-token")) as root:  # the right token works
            session = root.create_session(name="root", ttl=10, lock_delay=0)
            assert root.acquire("reports/nightly", session, b"x").acquired
            root.destroy_session(session)
    finally:
        agent.stop()


def _tls_agent(binary: str, workdir: Path) -> tuple[ConsulAgent, int, dict[str, str]]:
    workdir.mkdir(parents=True)
    for command in (["ca", "create"], ["cert", "create", "-server", "-dc", "dc1"], ["cert", "create", "-client"]):
        subprocess.run([binary, "tls", *command], cwd=workdir, check=True, capture_output=True, timeout=60)
    files = {
        "ca": str(workdir / "consul-agent-ca.pem"),
        "cert": str(workdir / "dc1-client-consul-0.pem"),
        "key": str(workdir / "dc1-client-consul-0-key.pem"),
    }
    (https,) = free_ports(1)
    hcl = (
        f'ports {{ https = {https} }} ca_file = "{files["ca"]}" cert_file = "{workdir}/dc1-server-consul-0.pem" '
        f'key_file = "{workdir}/dc1-server-consul-0-key.pem" verify_incoming_https = true'
    )
    agent = ConsulAgent(binary, workdir=workdir / "agent", extra_args=["-hcl", hcl]).start()
    return agent, https, files


@pytest.mark.consul
def test_tls_failures_name_the_settings_to_check(consul_binary: str, tmp_path: Path) -> None:
    agent, https, files = _tls_agent(consul_binary, tmp_path / "tls")
    address = f"https://127.0.0.1:{https}"

    def failure(environ: dict[str, str]) -> str:
        settings = ConsulSettings.from_env(environ, address=address, timeout=5)
        with ConsulBackend(settings) as backend, pytest.raises(BackendUnavailable) as info:
            backend.read("k")
        message = str(info.value)
        assert "did not answer" not in message, message
        assert "\n" not in message, message
        return message

    try:
        unknown_ca = failure({})
        assert "certificate verify failed" in unknown_ca, unknown_ca
        assert "CONSUL_CACERT" in unknown_ca, unknown_ca
        no_client_cert = failure({"CONSUL_CACERT": files["ca"]})
        assert "CONSUL_CLIENT_CERT" in no_client_cert, no_client_cert
        missing_ca = failure({"CONSUL_CACERT": str(tmp_path / "nope.pem")})
        assert f"the CA bundle (CONSUL_CACERT={tmp_path / 'nope.pem'}) cannot be loaded" in missing_ca, missing_ca
        plain_port = ConsulSettings.from_env({}, address=f"https://{agent.address}", timeout=5)
        with ConsulBackend(plain_port) as plain, pytest.raises(BackendUnavailable, match="does not speak TLS"):
            plain.read("k")
        good = {"CONSUL_CACERT": files["ca"], "CONSUL_CLIENT_CERT": files["cert"], "CONSUL_CLIENT_KEY": files["key"]}
        for environ in (good, {**good, "CONSUL_CACERT": "", "CONSUL_HTTP_SSL_VERIFY": "false"}):
            settings = ConsulSettings.from_env({k: v for k, v in environ.items() if v}, address=address)
            with ConsulBackend(settings) as backend:
                session = backend.create_session(name="tls", ttl=10, lock_delay=0)
                assert backend.acquire("tls/k", session, b"x").acquired
                backend.destroy_session(session)
    finally:
        agent.stop()


# -- tokens in the settings -----------------------------------------------------------------------------


def test_a_token_file_loses_its_trailing_newline_as_with_the_consul_cli(tmp_path: Path) -> None:
    path = tmp_path / "token"
    for text in (f"{TOKEN}\n", f"{TOKEN}\r\n", f"  {TOKEN}\n\n"):
        path.write_text(text)
        assert ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(path)}).token == TOKEN


@pytest.mark.parametrize(
    ("environ", "overrides", "named"),
    [
        ({"CONSUL_HTTP_TOKEN_FILE": "{file}"}, {}, "CONSUL_HTTP_TOKEN_FILE={file}"),
        ({"CONSUL_HTTP_TOKEN": f"{TOKEN}\nzweite-zeile"}, {}, "CONSUL_HTTP_TOKEN "),
        ({"CONSUL_HTTP_TOKEN": f"{TOKEN}\x1b[2J"}, {}, "CONSUL_HTTP_TOKEN "),
        ({}, {"token": f"{TOKEN}\tzweite"}, "token must be printable ASCII"),
        ({}, {"token": 12345678}, "token must be a string, got a value of type int"),
    ],
    ids=["file-with-two-lines", "variable-with-newline", "escape-sequence", "tab", "not-a-string"],
)
def test_a_token_that_cannot_be_sent_is_refused_without_showing_it(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, object], named: str
) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\nzweite-zeile\n")
    environ = {k: v.replace("{file}", str(path)) for k, v in environ.items()}
    with pytest.raises(ConfigurationError) as info:
        ConsulSettings.from_env(environ, **overrides)
    message = str(info.value)
    assert named.replace("{file}", str(path)) in message
    for secret in (TOKEN, "zweite", "12345678"):
        assert secret not in message
    assert "\n" not in message


# -- no Consul client library --------------------------------------------------------------------------


def test_the_library_imports_no_consul_client_and_no_requests() -> None:
    code = (
        "import sys, singleton, singleton.backends.consul, singleton.cli, singleton.goapi, singleton.election\n"
        "from singleton.backends import create_backend\n"
        "create_backend(singleton.Settings())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('consul', 'requests', 'urllib3')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
