"""Fixtures of the fault suite: a PostgreSQL of its own, which tests may stop and restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from faults.modes import FIGURES, FULL
from faults.pg_cluster import PostgresCluster, own_postgres


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PostgresCluster]:
    """A cluster of the suite's own on a spare port (never the shared server), running."""
    with own_postgres() as cluster:
        yield cluster


@pytest.fixture
def private_database(private_postgres: PostgresCluster) -> str:
    """A fresh, migrated, seeded database on that cluster; its URL."""
    if not private_postgres.running():
        private_postgres.start()
    return private_postgres.new_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures of this run (kills, outages, storms), for docs/reliability.md."""
    if FIGURES:
        mode = "full" if FULL else "quick"
        terminalreporter.section(f"fault suite figures ({mode} mode)")
        for figures in FIGURES:
            terminalreporter.write_line(figures)
