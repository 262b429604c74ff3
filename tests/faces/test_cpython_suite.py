"""tools/cpython_suite.py: a module that ran no test is "not compared", never "same"."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def load_runner() -> types.ModuleType:
    path = Path(__file__).resolve().parents[2] / "tools" / "cpython_suite.py"
    spec = importlib.util.spec_from_file_location("cpython_suite_verdict", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpython_suite_verdict"] = module
    spec.loader.exec_module(module)
    return module


def result(runner, counts, status=None):
    return runner.RunResult("x", 0, 1.0, counts=counts, status=status or {})


class TestNotCompared:
    """Rows with 0 tests run in both runs prove nothing and say so."""

    def test_expected_empty_module_is_not_compared(self, capsys):
        """test_timeout runs no test without the network resource: "not compared", no failure."""
        runner = load_runner()
        counts = {"test_x": runner.Counts(3, 3, 0, 0, 0)}
        stock = result(runner, dict(counts), {"test_x": "passed", "test_timeout": "skipped"})
        ours = result(runner, dict(counts), {"test_x": "passed", "test_timeout": "skipped"})
        identical, not_run = runner.print_table("3.11", ["test_x", "test_timeout"], stock, ours)
        out = capsys.readouterr().out
        assert identical
        assert not_run == []
        row = next(line for line in out.splitlines() if "test_timeout" in line)
        assert "not compared" in row
        assert "network" in row
        assert "yes" not in row

    def test_unexpected_empty_module_is_reported(self, capsys):
        """A module that should run tests but ran none is returned as not run."""
        runner = load_runner()
        stock = result(runner, {})
        ours = result(runner, {})
        _, not_run = runner.print_table("3.11", ["test_socket"], stock, ours)
        assert not_run == ["test_socket"]
        row = next(line for line in capsys.readouterr().out.splitlines()
                   if "test_socket" in line)
        assert "not compared" in row
        assert "expected to run tests" in row

    def test_one_sided_empty_run_is_a_mismatch(self):
        """0 tests in one run and some in the other is a difference, not "not compared"."""
        runner = load_runner()
        stock = result(runner, {"test_socket": runner.Counts(5, 5, 0, 0, 0)})
        ours = result(runner, {})
        identical, not_run = runner.print_table("3.11", ["test_socket"], stock, ours)
        assert not identical
        assert not_run == []

    def test_timeout_is_the_listed_exception(self):
        """Only modules documented as needing a never-enabled resource may run no test."""
        runner = load_runner()
        assert set(runner.NO_TESTS_EXPECTED) == {"test_timeout"}
        assert "test_timeout" in runner.MODULES["socket_helper"]
