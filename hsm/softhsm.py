"""SoftHSM2 as a development and test HSM: a token directory and config under a home.

SoftHSM reads ``SOFTHSM2_CONF`` when the module is initialised, so the variable must be set
before the first PKCS#11 call in the process; :func:`activate` does that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from string import Template

from hsm.errors import HsmError, HsmUnavailable

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

DEFAULT_TEMPLATE = """directories.tokendir = ${tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
"""


def find_module() -> str:
    for path in MODULE_CANDIDATES:
        if os.path.exists(path):
            return path
    raise HsmUnavailable(
        "SoftHSM2 module not found; install it (Debian: apt-get install softhsm2) "
        "or configure hsm.module with the path of your PKCS#11 module"
    )


def write_config(home_dir: Path, template: str | None = None) -> Path:
    """Create ``home_dir/softhsm/{tokens,softhsm2.conf}``; return the config path."""
    base = home_dir / "softhsm"
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    os.chmod(tokens, 0o700)
    conf = base / "softhsm2.conf"
    text = Template(template or DEFAULT_TEMPLATE).substitute(tokendir=str(tokens.resolve()))
    conf.write_text(text)
    return conf


def activate(conf: Path) -> None:
    """Point this process (and its children) at ``conf``; do it before loading the module."""
    os.environ["SOFTHSM2_CONF"] = str(conf.resolve())


def _util() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HsmUnavailable("softhsm2-util not found; install softhsm2")
    return util


def token_exists(conf: Path, label: str) -> bool:
    out = subprocess.run(
        [_util(), "--show-slots"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    labels = [
        line.split(":", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line.strip().startswith("Label:")
    ]
    return label in labels


def init_token(conf: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a fresh token in the first free slot; PINs are never logged."""
    if token_exists(conf, label):
        raise HsmError(f"a SoftHSM token labelled {label!r} already exists")
    proc = subprocess.run(
        [
            _util(),
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            user_pin,
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise HsmError(
            f"softhsm2-util could not initialise token {label!r}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
