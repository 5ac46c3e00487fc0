"""Running a checked operation without root's rights, so that permission tests run in CI (as root).

Root reads and writes every file whatever its mode, so a test of an unreadable folder or a
read-only library runs the operation it checks in a subprocess as user ``nobody`` (``setpriv``,
from util-linux) when the tests run as root; as any other user it runs as that user. The files
such a subprocess reads must lie in a folder ``nobody`` can reach: :func:`shared_tmp_dir`
(pytest's ``tmp_path`` is private to root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534


def unprivileged() -> list[str]:
    """The command prefix that runs a command as ``nobody`` when this process is root, else ``[]``."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("tests run as root need setpriv (apt-get install util-linux) to drop root's rights")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def run_python_unprivileged(code: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` with ``args`` in this interpreter, without root's rights (see :func:`unprivileged`)."""
    return subprocess.run(
        [*unprivileged(), sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HOME": str(cwd)},
        timeout=timeout,
    )


@contextlib.contextmanager
def shared_tmp_dir(prefix: str = "fgsearch-") -> Iterator[Path]:
    """A temporary folder every user can read (mode 755), removed afterwards whatever modes the
    test left inside it."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o755)
        yield base
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(base)
