"""Filters refuse a minimum score that is not a number: ``--min-score nan`` answered "no results"
(every comparison with NaN is false) instead of saying what was wrong."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fgsearch.console.cli import app
from fgsearch.errors import InputError
from fgsearch.search import Filters


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_min_score_must_be_finite(value: float) -> None:
    with pytest.raises(InputError, match=r"^min_score must be a finite number") as caught:
        Filters(min_score=value)
    assert caught.value.field == "filters.min_score"
    assert Filters(min_score=-3.5).min_score == -3.5


def test_cli_min_score_nan_is_one_line_error(tmp_path) -> None:
    r = CliRunner().invoke(app, ["query", "red", "--library", str(tmp_path / "lib"), "--min-score", "nan"])
    assert r.exit_code == 1 and r.output == "error: --min-score must be a finite number, got nan\n", r.output


@pytest.mark.parametrize(
    ("flag", "when", "expect_hits"),
    [
        ("--modified-after", "2999-01-01", False),  # past SQLite's 64-bit nanoseconds: was OverflowError
        ("--modified-before", "2999-01-01", True),
        ("--modified-after", "1000-01-01", True),
        ("--modified-before", "1000-01-01", False),
    ],
)
def test_modified_dates_far_from_now_filter_instead_of_overflowing(
    tmp_path, flag: str, when: str, expect_hits: bool
) -> None:
    from _library_data import demo_cli_library

    lib = demo_cli_library(tmp_path, n_good=3)
    r = CliRunner().invoke(app, ["query", "red", "--library", lib, flag, when, "--json"])
    assert r.exit_code == 0, r.output
    assert bool(json.loads(r.stdout)["results"]) is expect_hits
