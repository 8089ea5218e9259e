"""README.md says what to type; these tests type it.

- Every ``kakuin`` command in a ``sh`` block parses against the real CLI (command names,
  options, required options), and every ``make`` target exists in the Makefile.
- Every block marked ``<!-- tests/test_readme.py runs the next block verbatim ... -->`` runs
  as written under ``bash -eu`` in a fresh instance made by ``kakuin init``, with the venv's
  ``kakuin`` on the PATH and ``KAKUIN_HOME`` set, as the README tells the reader to do. Each
  ``# -> {...}`` comment is a promise about that command's JSON output and is checked.
  The tokens the block printed then work against the instance's real server (``kakuin serve``).

Whatever the block says is what runs: when the bootstrap changes, the test follows the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from kakuin.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
MARKER = "tests/test_readme.py runs the next block verbatim"


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    run: bool  # marked to be executed verbatim


def sh_blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i
            i += 1
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            marked = start > 0 and MARKER in lines[start - 1]
            blocks.append(Block(start + 1, "\n".join(body) + "\n", marked))
        i += 1
    return blocks


def commands(block: str) -> list[tuple[list[str], str]]:
    """Each command of a block as shell words, with its ``# ...`` comment (continuations joined)."""
    out = []
    for logical in block.replace("\\\n", " ").splitlines():
        code, _, comment = logical.partition(" #")
        if code.lstrip().startswith("#") or not code.strip():
            continue
        words = shlex.split(code)
        # `mkdir x && certutil ...`: each part of an && chain is a command of its own
        part: list[str] = []
        for word in [*words, "&&"]:
            if word == "&&":
                if part:
                    out.append((part, comment.strip()))
                part = []
            else:
                part.append(word)
    return out


def _parse_cli(args: list[str]) -> None:
    """Resolve ``kakuin ARGS`` through the click tree and parse every level's options."""
    ctx = main.make_context("kakuin", list(args))
    command: click.Command = main
    while isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 9 folds it in
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*getattr(ctx, "protected_args", ()), *ctx.args]
        if not rest:
            return
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"no command {rest[0]!r} under {ctx.command_path}"
        ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
        command = sub


BLOCKS = sh_blocks(README.read_text())


def test_readme_has_the_bootstrap_block_marked() -> None:
    marked = [b for b in BLOCKS if b.run]
    assert marked, "the bootstrap block lost its marker"
    assert any("kakuin org add" in b.text for b in marked)
    assert "8000020131041" not in README.read_text()  # fails kakuin's own check digit


SHELL_BUILTINS = {"export", "cd", ".", "source", "set", "unset"}
FILE_WORD = re.compile(r"^[^-][^=:]*\.(pdf|json|pem|crt|csv|toml)$")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_every_command_of_every_block_parses(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    makefile = (ROOT / "Makefile").read_text()
    monkeypatch.chdir(tmp_path)  # the files a command names exist, as they would for the reader
    for words, _ in commands(block.text):
        for word in words[1:]:
            if FILE_WORD.match(word):
                (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / word).touch()
        if words[0] == "kakuin":
            try:
                _parse_cli(words[1:])
            except click.ClickException as exc:
                pytest.fail(f"README.md:{block.line}: {shlex.join(words)}: {exc.format_message()}")
        elif words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), (block.line, target)
        elif words[0] not in SHELL_BUILTINS:  # a tool the README (or make) installs
            assert shutil.which(words[0]), f"README.md:{block.line}: {words[0]} is not installed"


def _promises(block: str) -> list[dict[str, Any]]:
    """The ``# -> {...}`` comments, as the JSON members they promise."""
    out = []
    for _, comment in commands(block):
        if comment.startswith("->"):
            promise = json.loads(comment[2:].strip())
            assert isinstance(promise, dict)
            out.append(promise)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAKUIN_", "SOFTHSM2_")) and k != "VIRTUAL_ENV"
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["KAKUIN_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh instance in a temporary home, made by the real ``kakuin init``."""
    home = tmp_path_factory.mktemp("readme") / "home"
    env = _clean_env(home)
    done = subprocess.run(
        ["kakuin", "init"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield home, env


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.run], ids=[f"README.md:{b.line}" for b in BLOCKS if b.run]
)
def test_marked_block_runs_verbatim(
    block: Block, instance: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    _home, env = instance
    done = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", block.text],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"README.md:{block.line} failed:\n{done.stdout}\n{done.stderr}"
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # Each promise is kept by the next printed object that has all its members, in order.
    rest = iter(printed)
    for promise in _promises(block.text):
        for obj in rest:
            if promise.keys() <= obj.keys():
                assert {k: obj[k] for k in promise} == promise, (block.line, obj)
                break
        else:
            pytest.fail(f"README.md:{block.line}: nothing printed {promise}: {printed}")

    # The printed tokens work against the instance's real server.
    tokens = [o for o in printed if "token" in o]
    if not tokens:
        return
    port = _free_port()
    server = subprocess.Popen(
        ["kakuin", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert server.poll() is None, "kakuin serve exited"
                assert time.monotonic() < deadline, "kakuin serve did not answer in 60 s"
                time.sleep(0.3)
        for issued in tokens:
            org = issued["organization_id"]
            req = urllib.request.Request(
                f"{base}/api/v1/organizations/{org}",
                headers={"Authorization": f"Bearer {issued['token']}"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
                assert json.loads(resp.read())["id"] == org
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
