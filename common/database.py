"""One SQL database reached with SQLAlchemy 2 Core: the URL checked once, transactions timed,
errors with the URL (never its password) in them, and the upsert both supported dialects share.

Used by `python -m batch` (its tables) and by the ground-truth room (the prediction log and the
labels). SQLite and PostgreSQL (psycopg 3) only: both have INSERT ... ON CONFLICT and RETURNING,
which the callers rely on. Needs the `groundtruth` extra (sqlalchemy, psycopg); nothing in the
servers imports this module unless the prediction log is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    ArgumentError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

SUPPORTED_DIALECTS = ("sqlite", "postgresql")
CONNECT_TIMEOUT_S = 5
URL_EXAMPLES = "sqlite:///predictions.db or postgresql+psycopg://user:password@host/db"

T = TypeVar("T")


class DatabaseError(RuntimeError):
    """The database is unreachable, refused a statement, or the URL is unusable. `transient`:
    worth trying again (no connection, a timeout, a lock); else the statement itself failed
    (a value too long, a constraint) and would fail again."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Database:
    """A connection pool to one database, and the time spent talking to it."""

    def __init__(
        self,
        url: str,
        flag: str = "--db",
        pool_timeout_s: float = 30.0,
        statement_timeout_s: float | None = None,
    ) -> None:
        """Check the URL and make the pool (no connection yet); raises DatabaseError.
        `statement_timeout_s`: PostgreSQL cancels a statement running longer (a stalled server
        holds no caller for ever)."""
        self.url = redact(url)
        try:
            options: dict[str, Any] = {}
            if not url.startswith("sqlite"):
                options["pool_timeout"] = pool_timeout_s
                # No pre-ping (a round trip per checkout): a connection the server dropped
                # fails its statement, SQLAlchemy discards it, and the callers retry.
                # An unreachable host fails in seconds, not at the TCP timeout (minutes).
                options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
                if statement_timeout_s is not None:
                    milliseconds = int(statement_timeout_s * 1000)
                    options["connect_args"]["options"] = f"-c statement_timeout={milliseconds}"
            self.engine: Engine = sa.create_engine(url, **options)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise DatabaseError(
                f"{flag} {self.url}: not a usable SQLAlchemy URL ({exc}); expected e.g. "
                f"{URL_EXAMPLES}"
            ) from exc
        self.dialect = self.engine.dialect.name
        if self.dialect not in SUPPORTED_DIALECTS:
            raise DatabaseError(
                f"{flag} {self.url}: {self.dialect} is not supported here; "
                f"expected {' or '.join(SUPPORTED_DIALECTS)}"
            )
        self.seconds = 0.0  # time spent in statements, for summaries

    def create(self, metadata: sa.MetaData) -> None:
        """Create the tables of `metadata` that are missing; raises DatabaseError."""
        self.run(lambda conn: metadata.create_all(conn))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work(connection)` in one transaction, timed; raises DatabaseError."""
        started = time.perf_counter()
        try:
            with self.engine.begin() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            transient = isinstance(exc, OperationalError | InterfaceError | PoolTimeout)
            raise DatabaseError(
                f"database {self.url}: {exc.__class__.__name__}: {exc}", transient
            ) from exc
        finally:
            self.seconds += time.perf_counter() - started

    def insert(self, table: sa.Table) -> Any:
        """This dialect's INSERT for `table`, with on_conflict_do_update/do_nothing."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def upsert(self, table: sa.Table) -> Any:
        """INSERT ... ON CONFLICT (primary key) DO UPDATE of every other column, executed with
        a list of rows (SQLAlchemy sends them as multi-row VALUES batches)."""
        statement = self.insert(table)
        keys = [c.name for c in table.primary_key.columns]
        return statement.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
        )

    def insert_new(self, table: sa.Table) -> Any:
        """INSERT ... ON CONFLICT (primary key) DO NOTHING: rows already there are kept."""
        keys = [c.name for c in table.primary_key.columns]
        return self.insert(table).on_conflict_do_nothing(index_elements=keys)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"
