"""Local cluster: nginx in front of several `kakuin serve` nodes sharing PostgreSQL and a token.

    python scripts/cluster.py start [--home var/cluster] [--front-port 8080] \
        [--nodes 8081,8082,8083]
    python scripts/cluster.py stop  [--home var/cluster]
    python scripts/cluster.py render --production --server-name ca.example.jp \
        --tls-cert /etc/ssl/ca.pem --tls-key /etc/ssl/ca.key --state-dir /var/lib/kakuin-nginx \
        --nodes 10.0.0.11:8080,10.0.0.12:8080,10.0.0.13:8080

`start` creates the database if missing, runs `kakuin init` once (key ceremony into that
database; the home keeps the SoftHSM token every node uses), `kakuin db upgrade`, starts the
nodes and nginx, and waits until the front answers /healthz. Every pid goes to
HOME/cluster/*.pid; `stop` signals exactly those pids (a node by its process group, which is
its gunicorn master and workers), nothing found by name.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "config" / "nginx"
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/kakuin"
DEFAULT_CACHE_SECONDS = 10


def _kakuin() -> str:
    local = Path(sys.executable).parent / "kakuin"
    return str(local) if local.exists() else "kakuin"


_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def _fill(template: Path, values: dict[str, str]) -> str:
    """Replace ${NAME} (ours); nginx's own $variables are left alone. Unknown names fail."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template.read_text())


def render(
    state_dir: Path, *, nodes: list[str], http_listen: str, server_name: str = "_",
    cache_seconds: int = DEFAULT_CACHE_SECONDS, production: bool = False,
    https_listen: str = "443", tls_cert: str = "", tls_key: str = "",
) -> Path:
    """Write nginx.conf and its locations include into ``state_dir``; return nginx.conf."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state_dir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    (state_dir / "nginx-cache").mkdir(exist_ok=True)
    # Production: nginx's own user (Debian: www-data) owns state_dir. Locally the workers run
    # as whoever starts the cluster: the scratch directories are inside the (0700) home.
    user_line = "user www-data;" if production else (
        f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else "")
    values = {
        "USER_LINE": user_line,
        "STATE_DIR": str(state_dir.resolve()),
        "CACHE_SECONDS": str(cache_seconds),
        "HTTP_LISTEN": http_listen,
        "SERVER_NAME": server_name,
        "UPSTREAM_SERVERS": "\n".join(
            f"        server {n} max_fails=1 fail_timeout=10s;" for n in nodes),
        # Production: plain HTTP only for the status/timestamp locations, the rest on TLS.
        "HTTP_REST": ("return 301 https://$host$request_uri;" if production
                      else "proxy_pass http://kakuin;"),
        "HTTPS_LISTEN": https_listen,
        "TLS_CERT": tls_cert,
        "TLS_KEY": tls_key,
    }
    values["TLS_SERVER"] = (_fill(TEMPLATES / "tls-server.conf.template", values)
                            if production else "")
    (state_dir / "kakuin-locations.conf").write_text(
        _fill(TEMPLATES / "kakuin-locations.conf.template", values))
    conf = state_dir / "nginx.conf"
    conf.write_text(_fill(TEMPLATES / "kakuin.conf.template", values))
    return conf


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our http URL)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _wait_healthy(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _get(url) == 200:
            return
        time.sleep(0.3)
    raise SystemExit(f"{url} not healthy after {seconds:.0f} s")


def ensure_database(url: str) -> None:
    """CREATE DATABASE for a PostgreSQL URL whose database does not exist yet."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = create_engine(parsed.set(database="postgres"), poolclass=NullPool,
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                  {"d": parsed.database}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()


def start(args: argparse.Namespace) -> None:
    home = Path(args.home).resolve()
    state = home / "cluster"
    state.mkdir(parents=True, exist_ok=True)
    if any(state.glob("*.pid")):
        raise SystemExit(f"pid files in {state}: already running? run `stop` first")
    ports = [int(p) for p in args.nodes.split(",")]
    env = {**os.environ, "KAKUIN_DATABASE_URL": args.database_url,
           "KAKUIN_BASE_URL": args.base_url or f"http://127.0.0.1:{args.front_port}"}
    if args.maintenance_interval is not None:
        env["KAKUIN_MAINTENANCE_INTERVAL"] = str(args.maintenance_interval)
    if not args.no_create_db:
        ensure_database(args.database_url)
    kakuin = [_kakuin(), "--home", str(home)]
    if not (home / "kakuin.toml").exists():
        # The nodes sit behind the local nginx: believe its X-Forwarded-For for rate limits.
        # (Production: also a shared Redis storage_url so limits count across nodes.)
        home.mkdir(parents=True, exist_ok=True)
        (home / "kakuin.toml").write_text(
            '# Written by scripts/cluster.py for the local cluster.\n'
            '[limits]\ntrusted_proxies = ["127.0.0.1"]\n')
    if not (home / "pki" / "chain.pem").exists():
        subprocess.run([*kakuin, "init"], env=env, check=True)
    subprocess.run([*kakuin, "db", "upgrade"], env=env, check=True)
    # What `start-node` needs to bring one node back (0600: the URL may hold a password).
    overrides = {k: env[k] for k in ("KAKUIN_DATABASE_URL", "KAKUIN_BASE_URL",
                                     "KAKUIN_MAINTENANCE_INTERVAL") if k in env}
    saved = state / "cluster.json"
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"ports": ports, "workers": args.workers, "env": overrides}, fh)
    pids = {f"node{i}": _start_node(home, i, port, args.workers, env)
            for i, port in enumerate(ports, 1)}
    for port in ports:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", 90)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = render(state, nodes=[f"127.0.0.1:{p}" for p in ports],
                  http_listen=f"127.0.0.1:{args.front_port}",
                  cache_seconds=args.cache_seconds)
    subprocess.run([nginx, "-t", "-q", "-c", str(conf), "-e", str(state / "nginx-error.log")],
                   check=True)
    subprocess.run([nginx, "-c", str(conf), "-e", str(state / "nginx-error.log")], check=True)
    _wait_healthy(f"http://127.0.0.1:{args.front_port}/healthz", 20)
    # nginx writes its own pid file; copy it next to the nodes' for `stop`.
    (state / "front.pid").write_text((state / "nginx.pid").read_text())
    pids["front"] = int((state / "nginx.pid").read_text())
    print(json.dumps({"front": f"http://127.0.0.1:{args.front_port}", "pids": pids}))


def _start_node(home: Path, index: int, port: int, workers: int, env: dict[str, str]) -> int:
    state = home / "cluster"
    with (state / f"node{index}.log").open("ab") as log:
        proc = subprocess.Popen(
            [_kakuin(), "--home", str(home), "serve", "--host", "127.0.0.1", "--port",
             str(port), "--workers", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # own process group: stop/kill reach its workers
    (state / f"node{index}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def start_node(args: argparse.Namespace) -> None:
    """Bring node ``--index`` back (after a crash) with the settings `start` used."""
    home = Path(args.home).resolve()
    state = home / "cluster"
    saved = json.loads((state / "cluster.json").read_text())
    pid_file = state / f"node{args.index}.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise SystemExit(f"node{args.index} is running (pid {pid_file.read_text().strip()})")
    port = saved["ports"][args.index - 1]
    pid = _start_node(home, args.index, port, saved["workers"], {**os.environ, **saved["env"]})
    _wait_healthy(f"http://127.0.0.1:{port}/healthz", 90)
    print(json.dumps({f"node{args.index}": pid}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(args: argparse.Namespace) -> None:
    state = Path(args.home).resolve() / "cluster"
    for pid_file in sorted(state.glob("*.pid")):
        if pid_file.name == "nginx.pid":
            continue
        pid = int(pid_file.read_text())
        is_node = pid_file.name.startswith("node")
        try:
            if is_node:
                os.killpg(pid, signal.SIGTERM)  # the node's master and its workers
            else:
                os.kill(pid, signal.SIGQUIT)  # nginx: graceful shutdown
        except ProcessLookupError:
            pid_file.unlink()
            continue
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            with_group = os.killpg if is_node else os.kill
            with_group(pid, signal.SIGKILL)
        pid_file.unlink()
        print(f"stopped {pid_file.stem} (pid {pid})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--home", default="var/cluster")
    p_start.add_argument("--front-port", type=int, default=8080)
    p_start.add_argument("--nodes", default="8081,8082,8083", help="node ports")
    p_start.add_argument("--workers", type=int, default=1, help="gunicorn workers per node")
    p_start.add_argument("--database-url",
                         default=os.environ.get("KAKUIN_DATABASE_URL") or DEFAULT_DB)
    p_start.add_argument("--no-create-db", action="store_true")
    p_start.add_argument("--base-url", default=None)
    p_start.add_argument("--maintenance-interval", type=float, default=None)
    p_start.add_argument("--cache-seconds", type=int, default=DEFAULT_CACHE_SECONDS)
    p_node = sub.add_parser("start-node", help="restart one node of a running cluster")
    p_node.add_argument("--home", default="var/cluster")
    p_node.add_argument("--index", type=int, required=True, help="1 for the first node")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--home", default="var/cluster")
    p_render = sub.add_parser("render", help="print the production nginx.conf")
    p_render.add_argument("--production", action="store_true")
    p_render.add_argument("--state-dir", default="/var/lib/kakuin-nginx")
    p_render.add_argument("--nodes", default="127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083")
    p_render.add_argument("--server-name", default="_")
    p_render.add_argument("--http-listen", default="80")
    p_render.add_argument("--https-listen", default="443")
    p_render.add_argument("--tls-cert", default="/etc/ssl/kakuin/fullchain.pem")
    p_render.add_argument("--tls-key", default="/etc/ssl/kakuin/privkey.pem")
    p_render.add_argument("--cache-seconds", type=int, default=DEFAULT_CACHE_SECONDS)
    args = parser.parse_args()
    if args.command == "start":
        start(args)
    elif args.command == "start-node":
        start_node(args)
    elif args.command == "stop":
        stop(args)
    else:
        conf = render(Path(args.state_dir), nodes=args.nodes.split(","),
                      http_listen=args.http_listen, server_name=args.server_name,
                      cache_seconds=args.cache_seconds, production=args.production,
                      https_listen=args.https_listen, tls_cert=args.tls_cert,
                      tls_key=args.tls_key)
        print(conf.read_text())


if __name__ == "__main__":
    main()
