"""Databases for the batch tests: a SQLite file, or a fresh database on a real PostgreSQL.

PostgreSQL comes from $TEST_POSTGRES_URL (`.ci/run` starts the machine's PostgreSQL and sets
it): a SQLAlchemy URL of a role allowed to create databases. Each test gets a database of its
own, dropped afterwards. Without the variable the PostgreSQL cases skip, except under CI, where
a missing PostgreSQL is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness import needs

POSTGRES_ENV = "TEST_POSTGRES_URL"
DATABASES = ("sqlite", "postgresql")


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of an empty database of `kind`; fails (CI) or skips without PostgreSQL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'predictions.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        needs.missing(f"no PostgreSQL: set {POSTGRES_ENV} (.ci/run starts one and sets it)")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"batch_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one SELECT and return its rows as tuples."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()
