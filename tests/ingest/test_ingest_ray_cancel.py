"""How a Ray run that stops early treats its tasks (fgsearch.ingest.ray_runner), on a fake Ray: no
cluster, just the calls the mapper makes. A task that has finished is never cancelled: Ray 2.60's
driver aborts the whole process ("Tried to complete task that was not pending") when a finished task
is force-cancelled, which is how CI lost a test run after a worker's error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fgsearch.errors import InputError
from fgsearch.ingest.ray_runner import RayMapper, RayOptions


class _TaskError(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Ref:
    def __init__(self, index: int) -> None:
        self.index = index


class _FakeRay:
    """Task ``fail`` finishes with a worker's error; tasks listed in ``done`` finish with a result;
    the others are still running when the driver looks."""

    exceptions = SimpleNamespace(RayTaskError=_TaskError, RayError=RuntimeError)

    def __init__(self, fail: int, done: set[int]) -> None:
        self.fail, self.done = fail, done
        self.cancelled: list[tuple[int, bool]] = []
        self.submitted: list[_Ref] = []

    def remote(self, *args: Any) -> _Ref:
        ref = _Ref(len(self.submitted))
        self.submitted.append(ref)
        return ref

    def _finished(self, ref: _Ref) -> bool:
        return ref.index == self.fail or ref.index in self.done

    def wait(self, refs: list[_Ref], num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        ready = [r for r in refs if self._finished(r)]
        if timeout is None:
            ready = ready[:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref: _Ref) -> Any:
        if ref.index == self.fail:
            raise _TaskError(InputError("no CUDA device"))
        return f"chunk {ref.index}"

    def cancel(self, ref: _Ref, force: bool = False) -> None:
        self.cancelled.append((ref.index, force))


@pytest.mark.parametrize(
    ("fail", "done", "committed", "cancelled"),
    [(0, {2}, [], [1]), (1, {0, 2}, ["chunk 0"], [3])],
)
def test_a_failed_task_and_finished_ones_are_never_cancelled_only_running_ones(
    fail: int, done: set[int], committed: list[str], cancelled: list[int]
) -> None:
    """Three tasks in flight; one fails. The failed one and those that finished are left alone; the
    ones still running are cancelled cooperatively (force kills the worker; see the module note)."""
    mapper = RayMapper(RayOptions(workers=3))
    fake = _FakeRay(fail=fail, done=done)
    mapper.ray = fake
    mapper.workers = 3
    task = SimpleNamespace(remote=fake.remote)
    got = []
    with pytest.raises(InputError, match="on a Ray worker: no CUDA device"):
        for result in mapper._results(task, None, [[1], [2], [3], [4]], []):  # type: ignore[arg-type]
            got.append(result)
    assert got == committed
    assert fake.cancelled == [(i, False) for i in cancelled]


def test_a_run_interrupted_between_results_cancels_what_is_still_running() -> None:
    mapper = RayMapper(RayOptions(workers=2))
    fake = _FakeRay(fail=-1, done={0})
    mapper.ray = fake
    mapper.workers = 2
    gen = mapper._results(SimpleNamespace(remote=fake.remote), None, [[1], [2], [3]], [])  # type: ignore[arg-type]
    assert next(gen) == "chunk 0"
    gen.close()  # the driver stops (an error in its commit, ^C): task 1 runs, task 2 runs
    assert fake.cancelled == [(1, False), (2, False)]
