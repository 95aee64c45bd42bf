"""The engine's rows (on the local cluster): every row done once, crashes isolated to their row,
clear give-up rules."""

from __future__ import annotations

import pytest

from fhe_toolkit.errors import RowsCrashedError, WorkerSetupError
from fhe_toolkit.fhe.engine import run_rows
from tests.tasks_for_tests import BrokenSetupTask, EchoTask

ITEMS = [f"row{i}".encode() for i in range(30)]


def test_every_row_once_across_workers():
    results: dict[int, bytes] = {}
    done: list[int] = []
    failures = run_rows(
        EchoTask(), ITEMS, range(30), results.__setitem__, workers=2, chunk_size=4,
        on_done=done.append,
    )  # fmt: skip
    assert failures == []
    assert sorted(results) == list(range(30)) and sorted(done) == list(range(30))
    assert all(results[i].startswith(ITEMS[i].upper()) for i in range(30))
    assert len({r.split(b":")[1] for r in results.values()}) == 2  # both workers worked


def test_a_segfault_costs_its_row_only():
    results: dict[int, bytes] = {}
    failures = run_rows(
        EchoTask(crash=frozenset({ITEMS[5]})), ITEMS, range(30), results.__setitem__,
        workers=2, chunk_size=4,
    )  # fmt: skip
    assert [f.position for f in failures] == [5]
    assert "crashed the worker (signal 11)" in failures[0].reason
    assert sorted(results) == [i for i in range(30) if i != 5]


def test_an_exception_is_reported_with_its_row():
    results: dict[int, bytes] = {}
    failures = run_rows(
        EchoTask(fail=frozenset({ITEMS[2]})), ITEMS, range(10), results.__setitem__, workers=1
    )
    assert [(f.position, f.reason) for f in failures] == [(2, "ValueError: bad row b'row2'")]
    assert len(results) == 9


def test_only_the_positions_asked_for_run():
    results: dict[int, bytes] = {}
    run_rows(EchoTask(), ITEMS, [3, 7, 29], results.__setitem__, workers=2)
    assert sorted(results) == [3, 7, 29]


def test_gives_up_when_every_row_crashes():
    with pytest.raises(RowsCrashedError, match="crashed on 3 row") as err:
        run_rows(EchoTask(crash=frozenset(ITEMS)), ITEMS, range(30), lambda *_: None, workers=1)
    assert [f.position for f in err.value.failures] == [0, 1, 2]


def test_setup_failure_is_reported():
    with pytest.raises(WorkerSetupError, match=r"server\.zip is missing"):
        run_rows(BrokenSetupTask(), ITEMS, range(3), lambda *_: None, workers=1)
