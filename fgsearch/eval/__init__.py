"""Benchmarks: reproduce the paper's evaluations from local data (``fgsearch eval TASK``).

Importing this package is light (numpy only); torch and the model load when a run starts.
"""

from fgsearch.eval.metrics import (
    first_hit_ranks,
    hard_negative_accuracy,
    recall_at_k,
    retrieval_metrics,
    topk_accuracy,
)
from fgsearch.eval.paper import PAPER, PaperNumber, paper_numbers
from fgsearch.eval.runner import ProgressFn, run_eval
from fgsearch.eval.tasks import TASKS, EvalResult, EvalTask

__all__ = [
    "PAPER",
    "TASKS",
    "EvalResult",
    "EvalTask",
    "PaperNumber",
    "ProgressFn",
    "first_hit_ranks",
    "hard_negative_accuracy",
    "paper_numbers",
    "recall_at_k",
    "retrieval_metrics",
    "run_eval",
    "topk_accuracy",
]
