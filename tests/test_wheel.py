"""A wheel install works on its own: config and profiles ship inside the package.

Builds the wheel from a copy of the checkout (so no build/ or egg-info is left behind),
installs it into a fresh venv that sees the test venv's site-packages through a ``.pth``
line (only to reuse the dependencies already installed: the kakuin package itself must come
from the wheel, which the venv's own site-packages puts first), then runs the real
``kakuin --home X init`` and ``kakuin serve`` and asks /healthz.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, check=False,
        **kwargs,  # type: ignore[arg-type]
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wheel_install_inits_and_serves(tmp_path: Path) -> None:
    source = tmp_path / "src"
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    for name in filter(None, _run(listed, cwd=ROOT).stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source])
    (wheel,) = wheels.glob("kakuin-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python, kakuin = venv / "bin" / "python", venv / "bin" / "kakuin"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(purelib.stdout.strip()) / "deps.pth").write_text(sysconfig.get_paths()["purelib"])
    _run([python, "-m", "pip", "install", "-q", "--no-deps", wheel])

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAKUIN_", "SOFTHSM2_", "PYTHON")) and k != "VIRTUAL_ENV"}
    work = tmp_path / "elsewhere"  # no config/ anywhere near the working directory
    work.mkdir()
    where = _run([python, "-c", "import kakuin.settings as s; print(s.__file__); "
                  "print(s.load_settings('h').config_dir)"], cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where
    assert Path(where[1]).is_relative_to(venv), where

    home = tmp_path / "home"
    port = _free_port()
    env["KAKUIN_BASE_URL"] = f"http://127.0.0.1:{port}"
    _run([kakuin, "--home", home, "init"], cwd=work, env=env)
    server = subprocess.Popen(
        [kakuin, "--home", home, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "kakuin serve did not answer in 60 s"
                time.sleep(0.3)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
