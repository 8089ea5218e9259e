"""Database fixtures: every store test runs on a SQLite file and, when reachable, PostgreSQL.

PostgreSQL comes from ``KAKUIN_TEST_POSTGRES_URL`` (default: the CI server below). Each test
gets a fresh schema, selected through ``search_path`` in the URL and dropped afterwards, so
tests never see each other's rows, in parallel or on rerun. When the server is unreachable
the PostgreSQL variants are skipped with the reason; set ``KAKUIN_TEST_REQUIRE_POSTGRES=1``
(CI) to make that an error instead.

Use from ``tests/conftest.py``::

    from tests.dbutil import db_url, store  # noqa: F401
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from ca.store import Store, upgrade

__all__ = ["DEFAULT_POSTGRES_URL", "database", "db_url", "postgres_url", "sqlite_url", "store"]

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_url() -> URL:
    """The test server's URL, with the psycopg 3 driver whatever the variable says."""
    url = make_url(os.environ.get("KAKUIN_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'kakuin.sqlite3'}"


@functools.cache
def _postgres_unreachable(url: URL) -> str | None:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not here"; the reason is shown
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    finally:
        engine.dispose()
    return None


@contextlib.contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """URL of an empty database of ``kind``; PostgreSQL gets a schema dropped afterwards.

    Skips (or fails, with KAKUIN_TEST_REQUIRE_POSTGRES=1) when PostgreSQL is unreachable.
    """
    if kind == "sqlite":
        yield sqlite_url(directory)
        return

    base = postgres_url()
    reason = _postgres_unreachable(base)
    if reason is not None:
        message = f"PostgreSQL not reachable at {base.render_as_string()}: {reason}"
        if os.environ.get("KAKUIN_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)

    schema = f"t_{secrets.token_hex(8)}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            # Don't hang the suite on a connection a failed test left inside a transaction.
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database of each kind."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated ``Store`` on each database kind."""
    upgrade(db_url)
    s = Store(db_url)
    try:
        yield s
    finally:
        s.dispose(close=True)
