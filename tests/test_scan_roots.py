"""A root that is not a folder is one file to index: a FIFO given as the root (``fgsearch index
pipe.jpg``) was walked as a folder and reported "folder cannot be read: Not a directory"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fgsearch.library import Library
from fgsearch.regions import RegionSettings
from fgsearch.scan import walk


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_root_is_a_file_the_decoder_refuses(tmp_path: Path, tiny_model_dir: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    entries = list(walk([fifo]))
    assert [e.path for e in entries] == [str(fifo)] and entries[0].error is None
    with Library.open(tmp_path / "lib", model=str(tiny_model_dir), regions=RegionSettings(proposer="none")) as lib:
        report = lib.index(str(fifo))
        assert report.failed == 1
        ((path, reason),) = lib.failures()
    assert path == str(fifo) and reason.startswith("not a regular file"), reason
