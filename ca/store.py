"""Database access: engine, sessions and schema migrations.

SQLite (a file under the home directory) for a single host, PostgreSQL in production; the
same code and the same Alembic revisions run on both. Query helpers for particular flows live
with those flows; this module stays generic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ca.errors import DuplicateEntry

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_unique_violation(exc: IntegrityError) -> bool:
    """True for a UNIQUE/PRIMARY KEY violation (PostgreSQL 23505, SQLite's message); NOT NULL,
    CHECK and foreign key violations stay errors of ours."""
    if getattr(exc.orig, "sqlstate", None) == "23505":
        return True
    message = str(exc.orig)
    return message.startswith(("UNIQUE constraint failed", "PRIMARY KEY constraint failed"))


def default_sqlite_url(home: Path) -> str:
    """URL of the SQLite database file inside the home directory."""
    return f"sqlite:///{(Path(home) / 'kakuin.sqlite3').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine configured the way the CA needs it on each backend.

    SQLite: usable from several threads; waits up to 30 s for the write lock instead of
    failing at once with "database is locked"; enforces foreign keys (off by default); WAL
    for files so readers (OCSP, status) don't block behind a writer. ``synchronous`` stays at
    its default (FULL): a CA must not lose a committed issuance on power loss.
    PostgreSQL: default pool, with a ping so connections dropped by the server are replaced.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        # psycopg 3 is the driver we depend on; SQLAlchemy's default would be psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)

    in_memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one connection, or each thread sees its own DB
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    return engine


class Store:
    """The CA's database: one engine and its session factory per process."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits if the block ends normally, rolls back if it raises.

        A business change and its audit entry written in one block land together or not at all.
        A unique constraint violated inside the block or at commit (a concurrent writer on
        another node won the race) becomes ``DuplicateEntry`` (409), never a 500.
        """
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                if is_unique_violation(exc):
                    raise DuplicateEntry(
                        "conflicts with an entry just written by a concurrent request"
                    ) from exc
                raise
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query (health checks)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self, *, close: bool = False) -> None:
        """Forget pooled connections so the next use opens fresh ones.

        Call in a forked child (e.g. gunicorn's ``post_fork``): a connection must never be
        shared across processes. The default leaves the inherited connections alone, because
        closing them from the child would also end the parent's PostgreSQL sessions; pass
        ``close=True`` at shutdown.
        """
        self.engine.dispose(close=close)


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration built in code: the scripts ship inside the ``ca`` package.

    The URL travels in ``attributes`` rather than the ini options, whose ``%`` interpolation
    would mangle URL-encoded passwords and query strings.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision`` (``alembic upgrade head``)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or ``None`` if never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this code (compare with ``current_revision``)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
