"""README.md says what to type; these tests type it.

- Every ``kakuin`` command in a ``sh`` block parses against the real CLI (command names,
  options, required options), every ``make`` target exists in the Makefile and every other
  tool is installed.
- Blocks marked ``<!-- tests/test_readme.py runs the next block verbatim (NAME) ... -->`` run as
  written under ``bash -eu`` in a fresh instance made by ``kakuin init``, with the venv's
  ``kakuin`` on the PATH and ``KAKUIN_HOME`` set, as the README tells the reader to do:
  ``bootstrap`` (each ``# -> {...}`` comment is a promise about that command's JSON output and
  is checked; the tokens it printed then work against the instance's real ``kakuin serve``) and
  ``pdfsig`` (on a seal made through that server, from a directory where ``var`` is the home,
  as after ``make run``).

Whatever a block says is what runs: when the bootstrap changes, the test follows the README.
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
from tests.fixtures_pdf import guidance_record

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
MARKER = re.compile(r"tests/test_readme\.py runs the next block verbatim \(([a-z-]+)\)")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    run: str | None  # the scenario that executes it verbatim, if marked


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
            marked = MARKER.search(lines[start - 1]) if start > 0 else None
            blocks.append(Block(start + 1, "\n".join(body) + "\n", marked and marked[1]))
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


def _marked(name: str) -> Block:
    found = [b for b in BLOCKS if b.run == name]
    assert len(found) == 1, f"README.md should mark exactly one block ({name})"
    return found[0]


def test_readme_has_the_marked_blocks() -> None:
    assert "kakuin org add" in _marked("bootstrap").text
    assert "pdfsig" in _marked("pdfsig").text
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


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _http(base: str, method: str, path: str, token: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status in (200, 201), resp.status
        return json.loads(resp.read())


@dataclass
class Instance:
    home: Path
    env: dict[str, str]
    base: str
    printed: list[dict[str, Any]]  # what the bootstrap block printed


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    """A fresh instance made by the real ``kakuin init``, bootstrapped by the README's block,
    served by ``kakuin serve`` at the URL its certificates name (``KAKUIN_BASE_URL``)."""
    work = tmp_path_factory.mktemp("readme")
    home = work / "home"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAKUIN_", "SOFTHSM2_")) and k != "VIRTUAL_ENV"
    }
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", KAKUIN_HOME=str(home))
    env["KAKUIN_BASE_URL"] = base
    done = subprocess.run(
        ["kakuin", "init"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    block = _marked("bootstrap")
    ran = _bash(block.text, work, env)
    assert ran.returncode == 0, f"README.md:{block.line} failed:\n{ran.stdout}\n{ran.stderr}"
    printed = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]

    server = subprocess.Popen(
        ["kakuin", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
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
        yield Instance(home, env, base, printed)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_bootstrap_block_runs_verbatim(instance: Instance) -> None:
    block = _marked("bootstrap")
    # Each promise is kept by the next printed object that has all its members, in order.
    rest = iter(instance.printed)
    for promise in _promises(block.text):
        for obj in rest:
            if promise.keys() <= obj.keys():
                assert {k: obj[k] for k in promise} == promise, (block.line, obj)
                break
        else:
            pytest.fail(f"README.md:{block.line}: nothing printed {promise}: {instance.printed}")
    # The printed tokens work against the instance's real server.
    tokens = [o for o in instance.printed if "token" in o]
    assert tokens
    for issued in tokens:
        org = issued["organization_id"]
        got = _http(instance.base, "GET", f"/api/v1/organizations/{org}", issued["token"])
        assert got["id"] == org


@pytest.mark.skipif(
    not (shutil.which("pdfsig") and shutil.which("certutil")),
    reason="needs pdfsig (poppler-utils) and certutil (libnss3-tools): make test installs them",
)
def test_pdfsig_block_runs_verbatim(instance: Instance, tmp_path: Path) -> None:
    """A school of the bootstrapped board gets a hosted seal (its system requests, the board's
    officer approves), the README's sealing line seals a PDF at the CA host, and the README's
    pdfsig block trusts it."""
    officer = next(o for o in instance.printed if o.get("role") == "board-officer")
    board = str(officer["organization_id"])
    cli = ["kakuin", "org", "add", "--kind", "school", "--name-ja", "新宿区立第一中学校",
           "--school-code", "C113210000010", "--board-id", board]  # fmt: skip
    school = json.loads(subprocess.check_output(cli, env=instance.env, text=True))
    made = subprocess.check_output(
        ["kakuin", "token", "create", "--org", str(school["id"]), "--role", "school-system",
         "--name", "校務支援システム"], env=instance.env, text=True,
    )  # fmt: skip
    system = json.loads(made)["token"]
    req = _http(instance.base, "POST", "/api/v1/seal-requests", system, {"key": {"hosted": True}})
    path = f"/api/v1/seal-requests/{req['id']}/approve"
    assert _http(instance.base, "POST", path, officer["token"])["status"] == "issued"

    (tmp_path / "var").symlink_to(instance.home)  # as after `make run`: the home is ./var
    (tmp_path / "record.pdf").write_bytes(guidance_record())
    # The README's own line seals it ("--org 3": the first school after the bootstrap).
    line = next(
        " ".join(words)
        for b in BLOCKS
        for words, _ in commands(b.text)
        if words[:5] == ["kakuin", "seal", "pdf", "record.pdf", "sealed.pdf"]
        and "--remote" not in words
    )
    assert f"--org {school['id']} " in f"{line} ", (line, school)
    sealed = _bash(line, tmp_path, instance.env)
    assert sealed.returncode == 0, line + sealed.stdout + sealed.stderr

    block = _marked("pdfsig")
    ran = _bash(block.text, tmp_path, instance.env)
    assert ran.returncode == 0, f"README.md:{block.line} failed:\n{ran.stdout}\n{ran.stderr}"
    assert "Signature Validation: Signature is Valid." in ran.stdout, ran.stdout
    assert "Certificate Validation: Certificate is Trusted." in ran.stdout, ran.stdout
