"""Databases for the batch and ground-truth tests: a SQLite file, a fresh database on a real
PostgreSQL, or a PostgreSQL cluster of the test's own that it may stop and start.

PostgreSQL comes from $TEST_POSTGRES_URL (`.ci/run` starts the machine's PostgreSQL and sets
it): a SQLAlchemy URL of a role allowed to create databases. Each test gets a database of its
own, dropped afterwards. Without the variable the PostgreSQL cases skip, except under CI, where
a missing PostgreSQL is a failure. A private cluster (`private_postgresql`) is made with
Debian's pg_createcluster, which needs root (CI runs as root), and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness import needs
from harness.databases import fresh_postgresql_database
from harness.servers import free_port

POSTGRES_ENV = "TEST_POSTGRES_URL"
DATABASES = ("sqlite", "postgresql")
POSTGRES_VERSION = "15"  # .ci/run installs postgresql-15


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of an empty database of `kind`; fails (CI) or skips without PostgreSQL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'predictions.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        needs.missing(f"no PostgreSQL: set {POSTGRES_ENV} (.ci/run starts one and sets it)")
    with fresh_postgresql_database(base, "batch_test") as url:
        yield url


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one SELECT and return its rows as tuples."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster of one test's own: its URL, and stop/start as an outage."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://gt_test:gt_test@127.0.0.1:{self.port}/gt"

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut, as in a crash or failover)."""
        _run(["pg_ctlcluster", POSTGRES_VERSION, self.name, "stop", "-m", "fast"])

    def start(self) -> None:
        _run(["pg_ctlcluster", POSTGRES_VERSION, self.name, "start"])


@contextmanager
def private_postgresql(tmp_path: Path) -> Iterator[Cluster]:
    """A new PostgreSQL cluster on a free port with an empty database `gt`, dropped after;
    fails (CI) or skips where clusters cannot be made (not root, no pg_createcluster)."""
    if shutil.which("pg_createcluster") is None:
        needs.missing("no pg_createcluster: install postgresql-15 (.ci/run does)")
    if os.geteuid() != 0:
        needs.missing("pg_createcluster needs root (CI runs as root)")
    cluster = Cluster(f"gt{uuid.uuid4().hex[:8]}", free_port())
    _run(["pg_createcluster", POSTGRES_VERSION, cluster.name, "-p", str(cluster.port), "--start"])
    try:
        sql = "CREATE ROLE gt_test LOGIN PASSWORD 'gt_test'; CREATE DATABASE gt OWNER gt_test;"
        for statement in sql.split("; "):
            _run(["su", "postgres", "-c", f'psql -p {cluster.port} -q -c "{statement}"'])
        yield cluster
    finally:
        _run(["pg_dropcluster", "--stop", POSTGRES_VERSION, cluster.name])


def _run(command: list[str]) -> None:
    """Run an admin command; raises RuntimeError with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stdout}{result.stderr}")
