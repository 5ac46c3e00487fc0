"""fgsearch.cli_options: option values checked and turned into the library's settings, one flag
named in every error."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from fgsearch import cli_options as opt
from fgsearch.boxes import Box
from fgsearch.errors import InputError
from fgsearch.library import BackendSettings


def test_check_range_names_the_flag_and_the_bounds() -> None:
    opt.check_range("--workers", 3, 0, 8)
    with pytest.raises(InputError, match=r"--workers must be between 0 and 8, got 9"):
        opt.check_range("--workers", 9, 0, 8)
    with pytest.raises(InputError, match=r"--min-side must be at least 1, got 0"):
        opt.check_range("--min-side", 0, 1)
    with pytest.raises(InputError, match="got nan"):
        opt.check_range("-k/--top", float("nan"), 1, opt.TOP_LIMIT)


def test_index_limits_and_max_regions() -> None:
    opt.check_index_limits(100.0, 16, 0, 0)
    with pytest.raises(InputError, match="--max-megapixels must be a positive number"):
        opt.check_index_limits(0.0, 16, 0, 0)
    with pytest.raises(InputError, match="--workers"):
        opt.check_index_limits(1.0, 16, 0, opt.WORKERS_LIMIT + 1)
    with pytest.raises(InputError, match="--max-regions"):
        opt.check_max_regions(None, opt.REGIONS_LIMIT + 1, None)
    opt.check_max_regions("sidecar", opt.REGIONS_LIMIT + 1, None)  # a sidecar's boxes are not cut by count here


def test_paths_must_exist(tmp_path: Path) -> None:
    opt.check_paths_exist([tmp_path])
    with pytest.raises(InputError, match="does not exist; give a folder of images"):
        opt.check_paths_exist([tmp_path / "nowhere"])


def test_settings_are_none_unless_asked_and_paths_are_absolute(tmp_path: Path, monkeypatch) -> None:
    assert opt.backend_settings(None, None, None) is None
    assert opt.region_settings(None, None, None) is None
    monkeypatch.chdir(tmp_path)
    bk = opt.backend_settings(None, None, Path("qd"))
    assert bk is not None and bk.kind == "qdrant" and bk.options["path"] == str(tmp_path.resolve() / "qd")
    assert opt.backend_settings("qdrant", None, None, ["collection=mine"]) == BackendSettings(
        "qdrant", {"collection": "mine"}
    )
    rs = opt.region_settings(None, None, "boxes.json")
    assert rs is not None and rs.proposer == "sidecar" and rs.max_regions == 16
    assert rs.sidecar == str(tmp_path.resolve() / "boxes.json")
    per_image = opt.region_settings("sidecar", 4, "per-image")
    assert per_image is not None and per_image.sidecar == "per-image" and per_image.max_regions == 4


def test_filters_parse_dates_and_make_under_absolute(tmp_path: Path) -> None:
    f = opt.filters("*.png", str(tmp_path / "a" / ".." / "b"), ("2024-01-02", None), (None, "2024-03-04T05:06"), 0.2)
    assert f.path_prefix == str(tmp_path / "b") and f.min_score == 0.2
    assert f.captured_after == datetime(2024, 1, 2) and f.modified_before == datetime(2024, 3, 4, 5, 6)
    with pytest.raises(InputError, match=r"--taken-before 'May' is not a date"):
        opt.filters(None, None, (None, "May"), (None, None), None)


def test_query_checks() -> None:
    opt.check_query(10, False, False)
    with pytest.raises(InputError, match="-k/--top"):
        opt.check_query(opt.TOP_LIMIT + 1, False, False)
    with pytest.raises(InputError, match="--null goes with --paths"):
        opt.check_query(10, False, True)


def test_library_query_errors_are_worded_with_flags() -> None:
    """The library's InputError names its parameters; the CLI words them as flags, from the field."""
    from fgsearch.search import FusionWeights, SearchQuery, check_query

    cases = [
        (SearchQuery(text="x", box=Box(0, 0, 1, 1)), "--box needs --image (the box is a region of the query image)"),
        (SearchQuery(text="x", text_path="medium"), "--text-path must be short, long or box"),
        (SearchQuery(text=" "), "empty query: give TEXT, --image, or both"),
        (SearchQuery(text="x", weights=FusionWeights(negative=-1)), "--w-not must be a number >= 0, got -1"),
        (SearchQuery(text="x", k=0), "-k/--top must be at least 1, got 0"),
    ]
    for q, worded in cases:
        with pytest.raises(InputError) as caught:
            check_query(q)
        assert caught.value.worded(opt.flag_of).startswith(worded), caught.value.worded(opt.flag_of)
        assert "--" not in str(caught.value)  # the library's own wording names no flag


def test_picture_targets_are_checked_before_any_work(tmp_path: Path) -> None:
    assert opt.picture_targets(None, None) == (None, None)
    show, page = opt.picture_targets(tmp_path / "s.png", tmp_path / "p.html")
    assert show == tmp_path / "s.png" and page == tmp_path / "p.html"
    with pytest.raises(InputError, match="--show"):
        opt.picture_targets(tmp_path / "s.gif", None)


def test_loss_names_drop_blanks() -> None:
    assert opt.loss_names(" global, ,region,") == ("global", "region")
