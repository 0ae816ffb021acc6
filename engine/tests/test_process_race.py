"""Several OS processes race for one key through a slow store: exactly one runs the handler."""

from __future__ import annotations

import multiprocessing
import secrets
from pathlib import Path

import pytest

from race_support import racer

RACERS = 6


def race(url: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(RACERS)
    results = context.Queue()
    effects = tmp_path / "effects.txt"
    effects.touch()
    key = "order-" + secrets.token_hex(4)
    processes = [
        context.Process(target=racer, args=(url, key, str(effects), barrier, results))
        for _ in range(RACERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    return outcomes, effects.read_text().splitlines()


def assert_exactly_one_ran(outcomes: list[str], effects: list[str]) -> None:
    assert len(effects) == 1, f"the handler ran {len(effects)} times"
    kinds = sorted(outcome.split("|")[0] for outcome in outcomes)
    assert kinds == ["new"] + ["replayed"] * (RACERS - 1)
    assert len({outcome.split("|")[1] for outcome in outcomes}) == 1  # one answer for all
    assert outcomes[0].split("|")[1] == f"made by {effects[0]}"


@pytest.mark.slow
def test_processes_racing_on_sqlite_run_the_handler_once(tmp_path: Path) -> None:
    outcomes, effects = race(f"sqlite:///{tmp_path}/race.db", tmp_path)
    assert_exactly_one_ran(outcomes, effects)


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_racing_on_postgresql_run_the_handler_once(
    postgres_url: str, tmp_path: Path
) -> None:
    outcomes, effects = race(postgres_url, tmp_path)
    assert_exactly_one_ran(outcomes, effects)


@pytest.mark.slow
def test_processes_racing_on_redis_run_the_handler_once(redis_url: str, tmp_path: Path) -> None:
    outcomes, effects = race(redis_url, tmp_path)
    assert_exactly_one_ran(outcomes, effects)
