"""The suite's own order and tiers (tests/conftest.py): what the quick tier leaves out, and
the slow tests scheduled first so that the two xdist workers finish together; and
benchmarks/suite_balance.py, which measures how evenly they were kept busy."""

import pytest

from tests.conftest import TRAINED_MODEL_FIXTURES
from tests.helpers import is_slow, load_benchmark


def test_the_slow_tests_are_collected_before_the_quick_ones(request):
    order = [is_slow(item) for item in request.session.items]
    assert order == sorted(order, reverse=True)
    # in file order within each group: the sort is stable
    quick = [item.nodeid for item in request.session.items if not is_slow(item)]
    files = [nodeid.split("::")[0] for nodeid in quick]
    assert files == sorted(files, key=files.index)  # each file's tests together
    assert request.node.nodeid in quick


def test_a_test_that_uses_a_trained_model_is_slow(request):
    using = [item for item in request.session.items
             if TRAINED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))]
    assert all(is_slow(item) for item in using)


LOG = """\
[gw1] [ 33%] PASSED tests/test_a.py::test_one
[gw0] [ 66%] PASSED tests/test_b.py::test_two[x]
[gw1] [100%] FAILED tests/test_a.py::test_three
============================= slowest durations ==============================
30.00s call     tests/test_b.py::test_two[x]
2.50s setup    tests/test_a.py::test_one
1.00s call     tests/test_a.py::test_one
0.50s teardown tests/test_a.py::test_three
=================== 1 failed, 2 passed in 31.20s ===================
"""


def test_suite_balance_sums_each_workers_tests(tmp_path, capsys):
    suite_balance = load_benchmark("suite_balance")
    busy = suite_balance.worker_busy(LOG)
    assert busy == {"gw0": (30.0, ["tests/test_b.py::test_two[x]"]),
                    "gw1": (4.0, ["tests/test_a.py::test_one", "tests/test_a.py::test_three"])}
    log = tmp_path / "suite.log"
    log.write_text(LOG)
    assert suite_balance.main([str(log)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gw0: 1 tests, busy 30 s, last tests/test_b.py::test_two[x]",
        "gw1: 2 tests, busy 4 s, last tests/test_a.py::test_three",
        "1 failed, 2 passed, wall 31.2 s"]


def test_suite_balance_refuses_a_log_without_workers(tmp_path, capsys):
    log = tmp_path / "suite.log"
    log.write_text("tests/test_a.py::test_one PASSED\n")
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark("suite_balance").main([str(log)])
    assert exit_info.value.code == 2
    assert "no [gwN] result lines" in capsys.readouterr().err
