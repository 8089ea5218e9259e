"""``kakuin serve`` as ``make run`` starts it (gunicorn, default worker class, 2 workers), as a
subprocess on the session home: /healthz stays fast while 20 clients trickle headers a byte
a second; /metrics adds up both workers (multiprocess mode), scheduler runs included.
Also: the home is 0700 and the database files 0600, fixed at start and kept by umask 077."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.slowloris import run as slowloris
from kakuin.cli import main
from tests.test_metrics import sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "KAKUIN_METRICS": "1", "KAKUIN_WORKERS": "2",
           "KAKUIN_LOG_LEVEL": "WARNING"}
    env.pop("KAKUIN_WORKER_CLASS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kakuin", "--home", str(home), "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("kakuin serve did not come up: "
                        + (proc.stderr.read() if proc.stderr else b"").decode()[-2000:])
        time.sleep(0.3)
    yield url
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_healthz_under_trickling_clients(server: str) -> None:
    result = slowloris(server, connections=20, seconds=4)
    assert result["connections"] == 20
    assert result["requests"] >= 5
    assert result["max_s"] < 1.0, result


def test_metrics_add_up_across_workers(server: str) -> None:
    for _ in range(6):
        urllib.request.urlopen(server + "/healthz", timeout=10).read()
    with urllib.request.urlopen(server + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert sample(text, "kakuin_http_requests_total", endpoint="/healthz", status="200") >= 6
    # The scheduler ran at start, once for both workers (one run per period: ca/scheduler.py).
    assert sample(text, "kakuin_scheduler_runs_total", outcome="ok") >= 1


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_database_are_private(server: str, home: Path) -> None:
    """The served home: its database (written by the server, so -wal/-shm exist) is 0600."""
    assert _mode(home) == 0o700
    files = [p for p in home.iterdir() if p.name.startswith("kakuin.db")]
    assert any(p.name.endswith("-wal") for p in files), files
    for path in files:
        assert _mode(path) == 0o600, path


def test_start_tightens_existing_modes_and_sets_umask(tmp_path: Path) -> None:
    """A home and database left world-readable (e.g. by an older kakuin) are fixed when any
    kakuin command starts; files made afterwards are private through the umask."""
    home = tmp_path / "loose"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # noqa: S103
    for name in ("kakuin.db", "kakuin.db-wal", "kakuin.db-shm"):
        (home / name).write_bytes(b"")
        os.chmod(home / name, 0o644)
    previous = os.umask(0o022)
    try:
        result = CliRunner().invoke(main, ["--home", str(home), "paths"])
        assert result.exit_code == 0, result.output
        assert os.umask(0o022) == 0o077
    finally:
        os.umask(previous)
    assert _mode(home) == 0o700
    for name in ("kakuin.db", "kakuin.db-wal", "kakuin.db-shm"):
        assert _mode(home / name) == 0o600


def test_new_database_is_private(tmp_path: Path) -> None:
    """A database made by ``kakuin db upgrade`` (its own process, default umask 022)."""
    home = tmp_path / "fresh"
    home.mkdir()
    subprocess.run([sys.executable, "-m", "kakuin", "--home", str(home), "db", "upgrade"],
                   check=True, timeout=120, capture_output=True,
                   preexec_fn=lambda: os.umask(0o022))
    files = [p for p in home.iterdir() if p.name.startswith("kakuin.db")]
    assert files
    for path in files:
        assert _mode(path) == 0o600, path
    assert _mode(home) == 0o700


def test_asyncio_run_is_safe_between_greenlets() -> None:
    """pyHanko's asyncio.run from concurrent greenlets: without the gate, all but one fail
    ("cannot be called from a running event loop"); with it all finish and other greenlets
    keep running meanwhile. In a subprocess: monkey-patching is for the whole process."""
    code = """
from gevent import monkey; monkey.patch_all()
import asyncio, sys, gevent
from kakuin.greenlets import in_gevent_worker, serialise_asyncio_run
async def work(i):
    await asyncio.sleep(0.1)
    return i
def run(i):
    try:
        return asyncio.run(work(i))
    except RuntimeError as exc:
        return str(exc)
def batch():
    jobs = [gevent.spawn(run, i) for i in range(4)]
    gevent.joinall(jobs)
    return [j.value for j in jobs]
ticks = []
def ticker():
    for _ in range(5):
        ticks.append(1)
        gevent.sleep(0.02)
assert in_gevent_worker()
before = batch()
assert sum(isinstance(v, str) for v in before) == 3, before
serialise_asyncio_run()
t = gevent.spawn(ticker)
assert batch() == [0, 1, 2, 3]
t.join()
assert len(ticks) == 5
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_trickling_client_is_cut_off(server: str) -> None:
    """Headers not complete within the keepalive deadline (2 s): the server hangs up."""
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    start = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.settimeout(0.5)
        closed_after = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(64) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None and closed_after < 4, closed_after
