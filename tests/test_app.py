"""The Flask app over real HTTP: health, problem+json, request ids; gunicorn serving."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_healthz_checks_hsm_and_database(live_server):
    status, headers, body = _get(f"{live_server.url}/healthz")
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "ok"
    assert data["checks"]["hsm"]["ok"] and data["checks"]["database"]["ok"]
    assert len(headers["X-Request-ID"]) == 32


def test_request_id_is_echoed_when_sane(live_server):
    _, headers, _ = _get(f"{live_server.url}/healthz", {"X-Request-ID": "abc-123"})
    assert headers["X-Request-ID"] == "abc-123"
    _, headers, _ = _get(f"{live_server.url}/healthz", {"X-Request-ID": "bad id\x01" * 20})
    assert headers["X-Request-ID"] != "bad id"


def test_unknown_path_is_problem_json(live_server):
    status, headers, body = _get(f"{live_server.url}/nope")
    assert status == 404
    assert headers["Content-Type"] == "application/problem+json"
    data = json.loads(body)
    assert data["type"] == "urn:kakuin:problem:http/not-found"
    assert data["status"] == 404 and data["title"] and data["request_id"]


def test_healthz_reports_a_broken_database(settings):
    from ca.profiles import load_profiles
    from ca.store import Store
    from kakuin.app import create_app
    from kakuin.services import Services, make_key_manager

    broken = Services(
        settings,
        Store("sqlite:////nonexistent-dir/x.db"),
        make_key_manager(settings),
        load_profiles(settings.profiles_dir),
    )
    client = create_app(settings, broken).test_client()
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json["checks"]["database"]["ok"] is False
    assert resp.json["checks"]["hsm"]["ok"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kakuin_serve_under_gunicorn_with_two_workers(home):
    """Workers fork after the app is built: each must open PKCS#11 afresh."""
    port = _free_port()
    env = {**os.environ, "KAKUIN_HOME": str(home)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kakuin",
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        statuses = []
        while time.monotonic() < deadline and len(statuses) < 20:
            try:
                status, _, body = _get(f"http://127.0.0.1:{port}/healthz")
                statuses.append((status, body))
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert statuses, "server did not come up"
        assert all(s == 200 for s, _ in statuses), statuses[-1]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert b"Traceback" not in out, out.decode(errors="replace")[-3000:]
