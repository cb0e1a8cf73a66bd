"""The README's Python snippets run as written, against a real agent where they need one.

Each ```python block runs as a script of its own, in a fresh interpreter pointed at the test agent
(``CONSUL_HTTP_ADDR``), unless an HTML comment just above it says what else it is:

``<!-- readme-test: django-settings -->``   a Django settings excerpt: its ``SINGLETON`` must validate
``<!-- readme-test: <file>.py -->``         a file of a pytest project, run with pytest as a user would
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from singleton.contrib.django.conf import settings_from
from singleton.testing import ConsulAgent

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<tag>[^>]+?) -->\n)?```python\n(?P<code>.*?)```", re.S)


@dataclass(frozen=True)
class Snippet:
    line: int
    tag: str | None
    code: str

    @property
    def name(self) -> str:
        return f"README.md:{self.line}" + (f" ({self.tag})" if self.tag else "")


def snippets() -> list[Snippet]:
    text = README.read_text()
    return [
        Snippet(text.count("\n", 0, match.start("code")) + 1, match.group("tag"), match.group("code"))
        for match in _BLOCK.finditer(text)
    ]


SCRIPTS = [snippet for snippet in snippets() if snippet.tag is None]
PROJECT_FILES = [snippet for snippet in snippets() if snippet.tag and snippet.tag.endswith(".py")]


def test_every_python_snippet_is_covered_here() -> None:
    assert len(snippets()) == README.read_text().count("```python"), "a snippet the pattern misses"
    tags = {snippet.tag for snippet in snippets()}
    assert tags <= {None, "django-settings"} | {snippet.tag for snippet in PROJECT_FILES}
    assert len(SCRIPTS) >= 3
    assert {snippet.tag for snippet in PROJECT_FILES} >= {"conftest.py"}


def _env(agent: ConsulAgent, key_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP", "SINGLETON_", "DJANGO_"))}
    env.update(CONSUL_HTTP_ADDR=agent.address, SINGLETON_KEY_PREFIX=key_prefix)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.consul
@pytest.mark.parametrize("snippet", SCRIPTS, ids=[snippet.name for snippet in SCRIPTS])
def test_a_snippet_runs_as_written(
    snippet: Snippet, consul_agent: ConsulAgent, key_prefix: str, tmp_path: Path
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env(consul_agent, key_prefix),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{snippet.name}\n{snippet.code}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    if "print(nightly())" in snippet.code:
        assert done.stdout.strip() == "3", "the first call runs on the holder: this process, the only one"


def test_the_django_settings_snippet_is_a_valid_setting() -> None:
    (snippet,) = [snippet for snippet in snippets() if snippet.tag == "django-settings"]
    namespace: dict[str, object] = {}
    exec(compile(snippet.code, snippet.name, "exec"), namespace)
    assert "singleton.contrib.django" in namespace["INSTALLED_APPS"]  # type: ignore[operator]
    settings = settings_from(namespace["SINGLETON"], {})
    assert settings.key_prefix == "myapp/"


@pytest.mark.consul
def test_the_fixtures_work_in_a_project_of_its_own_as_the_readme_shows(consul_binary: str, tmp_path: Path) -> None:
    """The README's conftest.py and test file in a directory of their own, run with pytest."""
    for snippet in PROJECT_FILES:
        assert snippet.tag is not None
        (tmp_path / snippet.tag).write_text(snippet.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP", "SINGLETON_", "PYTEST_"))}
    env.update(CONSUL_BIN=consul_binary, CI="true")  # a missing agent fails, never skips
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tests = sum(snippet.code.count("\ndef test_") for snippet in PROJECT_FILES)
    assert f"{tests} passed" in done.stdout, done.stdout


def test_the_install_line_names_extras_the_package_has() -> None:
    text = README.read_text()
    match = re.search(r"pip install '/path/to/singleton\[(?P<extras>[^\]]+)\]'", text)
    assert match is not None, "the install-from-a-checkout line"
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = set(config["options.extras_require"])
    assert set(match.group("extras").split(",")) <= extras
    named = set(re.findall(r"consul-singleton\[(\w+)\]", text))
    assert named <= extras, named - extras
