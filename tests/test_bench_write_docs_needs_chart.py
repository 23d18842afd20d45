"""``python -m benchmarks --write-docs --no-install`` without matplotlib is refused at
once: the chart is drawn after the run, which then ended with its records lost."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from benchmarks import cli


@pytest.fixture
def no_matplotlib(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(cli, "_scale", must_not_run)
    monkeypatch.setattr(cli, "run_benchmarks", must_not_run)


@pytest.mark.parametrize("args", [["--scale"], ["--quick", "--systems", "raw-zmq"]])
def test_write_docs_without_the_chart_library_is_refused_before_the_run(no_matplotlib, args):
    result = CliRunner().invoke(cli.bench, [*args, "--write-docs", "--no-install"])
    assert result.exit_code == 2, result.output
    assert "matplotlib" in result.output and "--no-docs" in result.output


def test_no_docs_runs_without_the_chart_library(no_matplotlib, monkeypatch):
    ran = []
    monkeypatch.setattr(cli, "_scale", lambda *a: ran.append(a))
    result = CliRunner().invoke(cli.bench, ["--scale", "--no-docs", "--no-install"])
    assert result.exit_code == 0, result.output
    assert len(ran) == 1
