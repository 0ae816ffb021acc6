"""Schema migrations (Alembic) driven from code: ``whatsorder migrate`` and the tests use this."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from whatsorder.db.engine import open_database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url)
    return config


def ensure_sqlite_directory(database_url: str) -> None:
    """``sqlite:///./var/x.db`` needs ``./var`` to exist before SQLite opens the file."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        path = database_url[len(prefix) :].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (blocking; runs its own event loop)."""
    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def move_to(database_url: str, target: str) -> str | None:
    """Upgrade or downgrade to ``target``; returns the revision the database is at afterwards.

    ``target`` is a revision id (``0002``), ``head``, ``base``, or a step (``-1``, ``+1``).
    Whether that is up or down is read from where the database is now. A downgrade drops what
    the later migrations added, tables and their rows included. Raises ``ValueError`` for a
    revision these migrations do not know.
    """
    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    current = asyncio.run(current_revision(database_url))
    if target in {"base"} or target.startswith("-"):
        down = True
    elif target in {"head", "heads"} or target.startswith("+"):
        down = False
    else:
        try:
            wanted = script.get_revision(target)
        except CommandError as error:
            raise ValueError(f"unknown revision {target!r}: {error}") from error
        if wanted is None:
            raise ValueError(f"unknown revision {target!r}")
        below = (
            set()
            if current is None
            else {revision.revision for revision in script.walk_revisions("base", current)}
        )
        down = wanted.revision in below and wanted.revision != current
    if down:
        downgrade(database_url, target)
    else:
        upgrade(database_url, target)
    return asyncio.run(current_revision(database_url))


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    engine = open_database(database_url)

    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_read)
    finally:
        await engine.dispose()


def is_current(database_url: str) -> bool:
    return asyncio.run(current_revision(database_url)) == head_revision(database_url)
