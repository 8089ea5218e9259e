"""The harness every benchmark shares, so a scenario file holds only its scenario.

- an instance: a temporary home after the real key ceremony (``kakuin --home <tmp> init``),
  its services and app, a board and a school with API tokens (``bootstrap``), a hosted e-seal
  requested by the school system and approved by the board officer over HTTP;
- servers: the app under werkzeug in this process (``InProcessServer``), ``kakuin serve``
  (gunicorn) as a child process, a plain HTTP client;
- measurement: peers taking turns round by round, order reversed every other round so drift
  on a shared machine hits them alike (``run_rounds``), per-call statistics (``Stats``),
  cProfile own-time buckets (``profile``);
- reporting: the environment a result was measured in and Markdown tables.

Bootstrapping goes through the registry as the operator does on the command line (a school
registered by the operator is active at once, see README "Bootstrapping"); the seal request
and its approval go over HTTP with two different clients, as dual control asks.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import http.client
import json
import logging
import os
import platform
import pstats
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.fixtures_pdf; bench.harness from bench/x.py

KAKUIN = Path(sys.executable).parent / "kakuin"
# Certificates name a public host: the ETSI lint refuses internal names in AIA/CDP URLs.
# Servers listen on loopback only; nothing is fetched from this host.
BASE_URL = "http://pki.example.com"
TIMEOUT = 60

Log = Callable[[str], None]


def logger(to_stderr: bool) -> Log:
    """Progress lines: to stderr when stdout carries JSON."""
    stream = sys.stderr if to_stderr else sys.stdout
    return lambda s: print(s, file=stream, flush=True)


def arguments(doc: str | None, *, count: int, rounds: int, what: str = "calls",
              quick: tuple[int, int] = (6, 2)) -> argparse.ArgumentParser:
    """The options every scenario takes: --count, --rounds, --quick, --json, --keep."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--count", type=int, default=count, help=f"{what} per peer ({count})")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"alternating rounds the count is split into ({rounds})")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: --count {quick[0]} --rounds {quick[1]}, no profile")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    return p


def finish_arguments(p: argparse.ArgumentParser, args: argparse.Namespace,
                     quick: tuple[int, int] = (6, 2)) -> argparse.Namespace:
    """Apply --quick, then check --count >= --rounds >= 1 (count at most 5000)."""
    if args.quick:
        args.count, args.rounds = quick
        if hasattr(args, "profile"):
            args.profile = 0
    if args.count < args.rounds or args.rounds < 1 or args.count > 5000:
        p.error("need 5000 >= --count >= --rounds >= 1")
    if getattr(args, "profile", 0) < 0:
        p.error("--profile must be >= 0")
    return args


# -- processes and HTTP --------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This environment without the settings of the caller's own instance."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class InProcessServer:
    """werkzeug on loopback in a thread, one request at a time (as one gunicorn worker).

    ``start=False`` leaves the serving to the caller (requests handled under cProfile).
    """

    def __init__(self, app: Any, *, start: bool = True) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=False)
        self.port: int = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.server.server_close()


def call(port: int, method: str, path: str, token: str | None = None,
         body: bytes | None = None, content_type: str = "application/json",
         ) -> tuple[int, bytes]:
    """One request on a fresh loopback connection; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def call_json(port: int, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    """POST JSON (or nothing), read JSON (or None)."""
    status, raw = call(port, "POST", path, token,
                       json.dumps(body).encode() if body is not None else None)
    return status, json.loads(raw) if raw else None


def start_serve(home: Path, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``kakuin --home <home> serve`` (one worker) on a free port, once /healthz answers."""
    port = free_port()
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [str(KAKUIN), "--home", str(home), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", *args],
            stdout=fh, stderr=fh, env=child_env(),
        )
    wait_healthy(proc, port, log)
    return proc, port


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path,
                 timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if call(port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"server did not become healthy; see {log}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- an instance ---------------------------------------------------------------------------------


def new_home(prefix: str, log: Log, base_url: str = BASE_URL) -> tuple[Path, Path]:
    """A temporary directory and, inside it, a home after the real key ceremony."""
    tmp = Path(tempfile.mkdtemp(prefix=f"kakuin-bench-{prefix}-"))
    home = tmp / "home"
    home.mkdir(mode=0o700)
    (home / "kakuin.toml").write_text(f'[server]\nbase_url = "{base_url}"\n')
    log(f"key ceremony: kakuin --home {home} init")
    subprocess.run([str(KAKUIN), "--home", str(home), "init"], check=True,
                   capture_output=True, env=child_env())
    return tmp, home


def open_home(home: Path) -> tuple[Any, Any, Any]:
    """(settings, services, app) of ``home``; the request log goes to home/requests.log.

    The request log stays on (INFO, as deployed) but not on the terminal; werkzeug's own
    access log and pyHanko's warnings are silenced.
    """
    from kakuin.app import create_app
    from kakuin.services import Services
    from kakuin.settings import load_settings

    os.environ.pop("KAKUIN_HSM_PIN", None)
    settings = load_settings(home)
    svc = Services.build(settings)
    app = create_app(settings, svc)
    request_log = (home / "requests.log").open("a")
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler):
            h.setStream(request_log)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("pyhanko").setLevel(logging.ERROR)
    return settings, svc, app


@dataclass(frozen=True)
class Tokens:
    """A board with its officer, and an active school of that board with its system."""

    school: str
    officer: str
    school_id: int
    board_id: int


def bootstrap(svc: Any) -> Tokens:
    from ca import clients, registry

    with svc.store.session() as s:
        board = registry.add_board(s, name_ja="新宿区教育委員会", local_gov_code="131041",
                                   actor="bench")
        school = registry.add_school(s, name_ja="新宿区立第一中学校",
                                     school_code="C113210000010", board_id=board.id,
                                     actor="bench")
        _, officer = clients.create_client(s, organization_id=board.id, role="board-officer",
                                           name="bench-officer", actor="bench")
        _, system = clients.create_client(s, organization_id=school.id, role="school-system",
                                          name="bench-school-system", actor="bench")
        return Tokens(school=system, officer=officer, school_id=school.id, board_id=board.id)


def hosted_seal(port: int, tokens: Tokens, algorithm: str = "ECDSA-P256") -> dict[str, Any]:
    """The school system requests a hosted e-seal, the board officer approves it."""
    status, req = call_json(port, "/api/v1/seal-requests", tokens.school,
                            {"key": {"hosted": True, "algorithm": algorithm}})
    if status != 201:
        raise RuntimeError(f"seal request: HTTP {status}: {req}")
    status, done = call_json(port, f"/api/v1/seal-requests/{req['id']}/approve",
                             tokens.officer)
    if status != 200:
        raise RuntimeError(f"approval: HTTP {status}: {done}")
    out: dict[str, Any] = done
    return out


def publish_crls(settings: Any, svc: Any) -> None:
    from ca import crl

    authorities = crl.load_authorities(svc.store, svc.keys, root_name=settings.ca.root_name,
                                       issuing_name=settings.ca.issuing_name)
    crl.publish_due(svc.store, authorities=authorities)


@dataclass
class Instance:
    """A home, its services and app on an in-process server, tokens, a hosted seal."""

    tmp: Path
    home: Path
    settings: Any
    services: Any
    app: Any
    server: InProcessServer
    tokens: Tokens

    def close(self, keep: bool, log: Log) -> None:
        self.server.close()
        self.services.close()
        if keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def instance(prefix: str, log: Log, *, seal: bool = True) -> Instance:
    """The usual set-up: home + init, bootstrap, a hosted P-256 e-seal, CRLs published."""
    tmp, home = new_home(prefix, log)
    settings, svc, app = open_home(home)
    tokens = bootstrap(svc)
    server = InProcessServer(app)
    if seal:
        log("hosted P-256 e-seal: request (school system) and approval (board) over HTTP")
        hosted_seal(server.port, tokens)
        publish_crls(settings, svc)
    return Instance(tmp, home, settings, svc, app, server, tokens)


# -- measurement ---------------------------------------------------------------------------------


def split(total: int, rounds: int) -> list[int]:
    """``total`` calls over ``rounds`` rounds, as evenly as whole numbers allow."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def quantile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Stats:
    """One peer's calls: seconds each, calls/s in each round, output sizes."""

    name: str
    seconds: list[float] = field(default_factory=list)
    by_round: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    @property
    def ms(self) -> float:
        return 1000 * sum(self.seconds) / len(self.seconds)

    def summary(self, unit: str = "calls") -> dict[str, Any]:
        out = {
            unit: len(self.seconds),
            "per_s": round(self.per_s, 2),
            "ms_mean": round(1000 * statistics.fmean(self.seconds), 2),
            "ms_median": round(1000 * statistics.median(self.seconds), 2),
            "ms_p95": round(1000 * quantile(self.seconds, 0.95), 2),
            "per_s_by_round": [round(x, 1) for x in self.by_round],
        }
        if self.sizes:
            out["output_bytes"] = round(statistics.fmean(self.sizes))
        return out


def run_rounds(peers: dict[str, Callable[[], Any]], count: int, rounds: int, log: Log,
               warmup: int = 3) -> tuple[dict[str, Stats], dict[str, Any]]:
    """Each peer makes ``count`` calls in ``rounds`` alternating turns, after ``warmup``
    untimed calls; returns the statistics and each peer's first output (for checking).
    Outputs that are bytes have their size recorded."""
    results = {name: Stats(name) for name in peers}
    first: dict[str, Any] = {}
    for name, fn in peers.items():
        for _ in range(warmup):
            first.setdefault(name, fn())
    for r, n in enumerate(split(count, rounds)):
        for name in list(peers) if r % 2 == 0 else list(reversed(peers)):
            fn, res = peers[name], results[name]
            first.setdefault(name, None)
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                out = fn()
                res.seconds.append(time.perf_counter() - t0)
                if isinstance(out, bytes | bytearray):
                    res.sizes.append(len(out))
                if first[name] is None:
                    first[name] = out
            res.by_round.append(n / (time.perf_counter() - start))
        log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{name} {results[name].by_round[-1]:.1f}/s" for name in peers))
    return results, first


def ratio_by_round(a: Stats, b: Stats) -> list[float]:
    """(min, median, max) of a's rate over b's, round by round: robust to drifting load."""
    ratios = [x / y for x, y in zip(a.by_round, b.by_round, strict=True)]
    return [round(min(ratios), 2), round(statistics.median(ratios), 2), round(max(ratios), 2)]


Buckets = Sequence[tuple[str, Sequence[str]]]


def profile(fn: Callable[[], Any], n: int, buckets: Buckets, other: str = "other",
            unit: str = "call") -> dict[str, Any]:
    """``n`` calls under cProfile; own time (so they add up) in buckets matched in order on
    the file path or, for C functions, the description, and the top functions."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(n):
        fn()
    profiler.disable()
    elapsed = time.perf_counter() - start
    return profile_stats(pstats.Stats(profiler), n, elapsed, buckets, other, unit)


def profile_stats(stats: pstats.Stats, n: int, elapsed: float, buckets: Buckets,
                  other: str = "other", unit: str = "call") -> dict[str, Any]:
    totals: dict[str, float] = {}
    top = []
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (path, _line, func), (_cc, calls, tottime, _ct, _callers) in raw.items():
        key = f"{path} {func}"
        bucket = next((b for b, needles in buckets if any(x in key for x in needles)), other)
        totals[bucket] = totals.get(bucket, 0.0) + tottime
        top.append((tottime, calls, f"{Path(path).name}:{func}"))
    top.sort(reverse=True)
    total = sum(totals.values()) or 1.0
    return {
        f"{unit}s": n,
        f"profiled_ms_per_{unit}": round(1000 * elapsed / n, 2),
        f"buckets_ms_per_{unit}": {b: round(1000 * t / n, 2)
                                   for b, t in sorted(totals.items(), key=lambda kv: -kv[1])},
        "buckets_share": {b: round(t / total, 3) for b, t in totals.items()},
        f"top_tottime_ms_per_{unit}": [
            {"ms": round(1000 * t / n, 3), "calls": c // n, "function": f} for t, c, f in top[:10]
        ],
    }


def print_profile(label: str, prof: dict[str, Any], unit: str = "call") -> None:
    print(f"cProfile {label} ({prof[f'{unit}s']} {unit}s, "
          f"{prof[f'profiled_ms_per_{unit}']} ms each under the profiler):")
    for b, ms in prof[f"buckets_ms_per_{unit}"].items():
        print(f"  {b:45} {ms:8.2f} ms  {100 * prof['buckets_share'][b]:5.1f} %")
    print("  top functions by own time:")
    for f in prof[f"top_tottime_ms_per_{unit}"][:8]:
        print(f"    {f['ms']:8.3f} ms  {f['calls']:6} calls  {f['function'][:70]}")


# -- reporting -----------------------------------------------------------------------------------


def tool_version(cmd: Sequence[str]) -> str:
    """The first line a tool prints about its version, or "unknown"."""
    if shutil.which(cmd[0]) is None:
        return "unknown"
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def package_version(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return "unknown"


def environment(load_at_start: Sequence[float] | None = None, *,
                packages: Iterable[str] = (), tools: dict[str, Sequence[str]] | None = None,
                **extra: Any) -> dict[str, Any]:
    """Where and with what a result was measured: date, command, commit, CPUs, versions."""
    head = tool_version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                           capture_output=True, text=True, check=False).stdout.strip()
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "git": head + (" (dirty tree)" if dirty else ""),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    env.update({name: package_version(name) for name in packages})
    for name, cmd in (tools or {"softhsm": ["softhsm2-util", "--version"]}).items():
        env[name] = tool_version(cmd)
    if load_at_start is not None:
        env["loadavg_at_start"] = [round(x, 2) for x in load_at_start]
        env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    env.update(extra)
    env["run_id"] = secrets.token_hex(4)
    return env


def print_environment(env: dict[str, Any], keys: Iterable[str] | None = None) -> None:
    for k in keys or env:
        if k in env:
            print(f"{k}: {env[k]}")


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]],
                   left: Iterable[int] = (0,)) -> str:
    """A Markdown table with padded columns; ``left`` columns left-aligned, others right."""
    rows = [tuple(r) for r in rows]
    lefts = {i % len(head) for i in left}
    widths = [max(len(r[i]) for r in (tuple(head), *rows)) for i in range(len(head))]

    def line(cols: Sequence[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i in lefts else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))) + " |"

    sep = "|" + "|".join((":" + "-" * (w + 1)) if i in lefts else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def rate_table(summaries: dict[str, dict[str, Any]], unit: str, count_key: str = "calls",
               *, one: str | None = None, with_size: bool = False) -> str:
    """The usual per-peer table from ``Stats.summary()``: count, rate, mean/median/p95 ms,
    rate range over the rounds (and output size)."""
    head = ["peer", unit, f"{unit}/s", f"ms/{one or unit}", "median ms", "p95 ms"]
    if with_size:
        head.append("KB out")
    head.append(f"{unit}/s by round (min-max)")
    rows = []
    for name, s in summaries.items():
        row = [name, str(s[count_key]), f"{s['per_s']:.1f}", f"{s['ms_mean']:.2f}",
               f"{s['ms_median']:.2f}", f"{s['ms_p95']:.2f}"]
        if with_size:
            row.append(f"{s.get('output_bytes', 0) / 1024:.1f}")
        row.append(f"{min(s['per_s_by_round']):.0f}-{max(s['per_s_by_round']):.0f}")
        rows.append(row)
    return markdown_table(head, rows, left=(0, -1))


def scratch_token(directory: Path, label: str) -> tuple[Any, str, str]:
    """A throwaway SoftHSM token under ``directory`` and kakuin's key manager logged in to it;
    (manager, module path, user PIN). Call before the PKCS#11 module is first loaded."""
    from hsm import softhsm
    from hsm.pkcs11 import Pkcs11KeyManager

    conf = softhsm.write_config(directory)
    softhsm.activate(conf)
    pin = secrets.token_urlsafe(12)
    softhsm.init_token(conf, label, secrets.token_urlsafe(12), pin)
    module = softhsm.find_module()
    return Pkcs11KeyManager(module, label, pin), module, pin


def self_signed(key: Any, common_name: str, *, days: int,
                extensions: Sequence[tuple[Any, bool]] = (),
                not_before: dt.timedelta = dt.timedelta(minutes=5)) -> Any:
    """A self-signed certificate for an openssl peer's own CA or TSA (SHA-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - not_before).not_valid_after(now + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def write_key_and_certificate(key: Any, cert: Any, key_path: Path, cert_path: Path) -> None:
    """PEM files for an openssl peer: the key PKCS#8, unencrypted, mode 0600."""
    from cryptography.hazmat.primitives import serialization

    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def remove(tmp: Path, keep: bool, log: Log) -> None:
    """The temporary directory goes, unless --keep."""
    if keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
