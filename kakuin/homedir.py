"""File modes of the home: the directory 0700, the SQLite database and its -wal/-shm/-journal
0600. The database holds the audit log, API token hashes and hosted-key ids: nobody else on
the machine reads it. New files get this from ``umask 077`` (set by the ``kakuin`` command;
SQLite creates -wal and -shm with the database file's mode); files made before are fixed here.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from kakuin.settings import Settings

PRIVATE_UMASK = 0o077
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory or other databases)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def secure_home(settings: Settings) -> None:
    """Home 0700 and database files 0600, if they exist and are ours (best effort on others)."""
    _chmod(settings.home, 0o700)
    db = sqlite_path(settings.database_url)
    if db is not None:
        for suffix in _SQLITE_SUFFIXES:
            _chmod(db.with_name(db.name + suffix), 0o600)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.exists() and path.stat().st_uid == os.geteuid():
            os.chmod(path, mode)
    except OSError:
        pass


def metrics_dir(home: Path) -> Path:
    """A private, empty directory for the server's Prometheus multiprocess files (0700):
    files left by an earlier run would otherwise be added to this one's counts."""
    path = home / "metrics"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path
