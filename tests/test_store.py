from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from ca.errors import DuplicateEntry
from ca.models import ApiClient, AuditHead, Base, Certificate, Organization, serial_hex
from ca.store import (
    Store,
    alembic_config,
    current_revision,
    default_sqlite_url,
    head_revision,
    make_engine,
    upgrade,
)

JST = timezone(timedelta(hours=9))


def _org(**overrides: object) -> Organization:
    fields: dict[str, object] = {"kind": "school", "name_ja": "杉並区立第一小学校"}
    fields.update(overrides)
    return Organization(**fields)


def test_upgrade_reaches_head_and_is_idempotent(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision() == "0007"
    upgrade(db_url)
    assert current_revision(db_url) == "0007"


def test_migrations_go_step_by_step(db_url: str) -> None:
    """An instance at 0001 (the first release) upgrades to the newest schema."""
    upgrade(db_url, "0001")
    assert current_revision(db_url) == "0001"
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert current_revision(db_url) is None
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_models_match_migrations(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            # Alembic does not compare CHECK constraints; compare names (and on SQLite,
            # which reflects them verbatim, the SQL) ourselves.
            inspector = inspect(connection)
            for table in Base.metadata.sorted_tables:
                expected = {
                    str(c.name): str(c.sqltext)
                    for c in table.constraints
                    if isinstance(c, CheckConstraint)
                }
                found = {
                    str(c["name"]): c["sqltext"]
                    for c in inspector.get_check_constraints(table.name)
                }
                assert set(found) == set(expected), table.name
                if connection.dialect.name == "sqlite":
                    assert found == expected, table.name
    finally:
        engine.dispose()


def test_initial_migration_seeds_the_audit_head(store: Store) -> None:
    with store.session() as session:
        head = session.get_one(AuditHead, 1)
        assert (head.last_seq, head.last_hash) == (0, "0" * 64)


def test_session_commits(store: Store) -> None:
    with store.session() as session:
        session.add(_org(school_code="A113200000019"))
    with store.session() as session:
        org = session.scalars(select(Organization)).one()
        assert org.status == "active"
        assert org.created_at.tzinfo is UTC


def test_session_rollback_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.session() as session:
        org = _org()
        session.add(org)
        session.flush()
        session.add(ApiClient(organization_id=org.id, role="school", name="x", token_hash="a" * 64))
        session.flush()
        raise RuntimeError("boom")
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Organization)) == 0
        assert session.scalar(select(func.count()).select_from(ApiClient)) == 0


def test_timestamps_come_back_as_aware_utc(store: Store) -> None:
    noon_jst = datetime(2026, 4, 1, 12, 0, 0, 123456, tzinfo=JST)
    with store.session() as session:
        org = _org()
        session.add(org)
        session.flush()
        session.add(
            Certificate(
                issuer_name="kakuin-issuing-ca",
                serial=serial_hex(0x1234),
                kind="eseal",
                subject="CN=test",
                organization_id=org.id,
                not_before=noon_jst,
                not_after=noon_jst + timedelta(days=365),
                status="reserved",
                public_key_sha256="b" * 64,
            )
        )
    with store.session() as session:
        cert = session.scalars(select(Certificate)).one()
        assert cert.not_before == noon_jst
        assert cert.not_before.tzinfo is UTC
        assert cert.not_before.hour == 3
        assert cert.shard == 0


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"), store.session() as session:
        session.add(_org(created_at=datetime(2026, 4, 1, 12, 0)))
        session.flush()


def test_foreign_keys_are_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(ApiClient(organization_id=999, role="school", name="x", token_hash="c" * 64))


def test_check_constraints_are_enforced(store: Store) -> None:
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(_org(kind="ministry"))


def test_unique_issuer_serial(store: Store) -> None:
    def cert() -> Certificate:
        now = datetime.now(UTC)
        return Certificate(
            issuer_name="kakuin-issuing-ca",
            serial="1f",
            kind="eseal",
            subject="CN=x",
            not_before=now,
            not_after=now,
            status="reserved",
            public_key_sha256="d" * 64,
        )

    with store.session() as session:
        session.add(cert())
    # A unique violation is a conflict (409) for callers, with the database's error as cause.
    with pytest.raises(DuplicateEntry) as caught, store.session() as session:
        session.add(cert())
    assert isinstance(caught.value.__cause__, IntegrityError)


def test_ping(store: Store, tmp_path: Path) -> None:
    store.ping()
    broken = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}")
    with pytest.raises(OperationalError):
        broken.ping()
    broken.dispose(close=True)


def test_sqlite_file_uses_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    s = Store(default_sqlite_url(tmp_path))
    try:
        with s.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        s.dispose(close=True)


def test_in_memory_sqlite_is_one_database_across_threads() -> None:
    import threading

    url = "sqlite://"
    s = Store(url)
    Base.metadata.create_all(s.engine)
    with s.session() as session:
        session.add(_org())

    counts: list[int | None] = []

    def count() -> None:
        with s.session() as session:
            counts.append(session.scalar(select(func.count()).select_from(Organization)))

    thread = threading.Thread(target=count)
    thread.start()
    thread.join()
    assert counts == [1]
    s.dispose(close=True)


def test_default_sqlite_url(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve()}/kakuin.sqlite3"
    assert url.startswith("sqlite:////")  # absolute path


def test_store_repr_hides_password_and_plain_postgresql_uses_psycopg3() -> None:
    s = Store("postgresql://kakuin:secret@db.invalid/kakuin")
    assert "secret" not in repr(s)
    assert s.engine.url.drivername == "postgresql+psycopg"
    s.dispose(close=True)


def test_dispose_keeps_the_store_usable(store: Store) -> None:
    store.ping()
    store.dispose()
    store.ping()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, "1"), (0xABCDEF, "abcdef"), (0x00FF, "ff"), ((1 << 159) - 1, "7" + "f" * 39)],
)
def test_serial_hex(value: int, expected: str) -> None:
    assert serial_hex(value) == expected


@pytest.mark.parametrize("value", [0, -1, 1 << 159])
def test_serial_hex_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="serial"):
        serial_hex(value)
