"""Metric code against cases computed by hand: ties, duplicates, several captions per image."""

from __future__ import annotations

import numpy as np
import pytest

from fgsearch.errors import InputError
from fgsearch.eval.metrics import (
    first_hit_ranks,
    hard_negative_accuracy,
    invert,
    recall_at_k,
    retrieval_metrics,
    topk_accuracy,
)

# 4 images of classes [0, 1, 2, 2] (images 2 and 3 are duplicates), 2 captions each; a caption of
# class j scores 1 against images of class j, else 0. Every rank below was worked out on paper.
IMG_CLASS = [0, 1, 2, 2]
CAP_CLASS = [0, 1, 1, 3, 2, 2, 2, 0]
CAP_IMAGE = [0, 0, 1, 1, 2, 2, 3, 3]


def _sim() -> np.ndarray:
    return (np.array(IMG_CLASS)[:, None] == np.array(CAP_CLASS)[None, :]).astype(np.float32)


def test_ranks_by_hand_pessimistic_and_index() -> None:
    sim = _sim()
    gt = [[i] for i in CAP_IMAGE]
    # t2i, pessimistic: a wrong image tying with the correct one is ranked first
    assert first_hit_ranks(sim.T, gt).tolist() == [0, 3, 0, 3, 1, 1, 1, 3]
    # t2i, stable by index: lower image index first among equal scores
    assert first_hit_ranks(sim.T, gt, ties="index").tolist() == [0, 1, 0, 1, 0, 0, 1, 3]
    # i2t: several correct captions per image; the best-ranked one counts
    img_gt = invert(gt, 4)
    assert img_gt == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert first_hit_ranks(sim, img_gt).tolist() == [1, 1, 1, 2]
    assert first_hit_ranks(sim, img_gt, ties="index").tolist() == [0, 1, 0, 2]


def test_retrieval_metrics_by_hand() -> None:
    m = retrieval_metrics(_sim(), [[i] for i in CAP_IMAGE], ks=(1, 2, 5))
    assert m == {
        "t2i_r1": 25.0,
        "t2i_r2": 62.5,  # ranks < 2: 0, 0, 1, 1, 1
        "t2i_r5": 100.0,
        "i2t_r1": 0.0,
        "i2t_r2": 75.0,
        "i2t_r5": 100.0,
    }
    m = retrieval_metrics(_sim(), [[i] for i in CAP_IMAGE], ks=(1,), ties="index")
    assert m == {"t2i_r1": 50.0, "i2t_r1": 50.0}


def test_duplicate_images_as_several_correct_answers() -> None:
    # declaring images 2 and 3 as both correct for every class-2 caption removes the tie penalty
    gt = [[i] for i in CAP_IMAGE]
    gt[4] = gt[5] = gt[6] = [2, 3, 3]  # duplicates inside a list are harmless
    ranks = first_hit_ranks(_sim().T, gt)
    assert ranks.tolist() == [0, 3, 0, 3, 0, 0, 0, 3]
    # and the inverse view gives each duplicate image its captions plus the shared ones
    assert invert(gt, 4)[3] == [4, 5, 6, 7]


def test_all_equal_scores_are_the_worst_case() -> None:
    sim = np.zeros((3, 5))
    assert recall_at_k(sim, [[0], [2], [4]], ks=(1, 4, 5)) == {1: 0.0, 4: 0.0, 5: 100.0}
    assert recall_at_k(sim, [[0], [2], [4]], ks=(1,), ties="index")[1] == pytest.approx(100 / 3)


def test_recall_is_monotone_and_bounded_on_random_data() -> None:
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(50, 30))
    gt = [[int(rng.integers(30)), int(rng.integers(30))] for _ in range(50)]
    r = recall_at_k(sim, gt, ks=(1, 5, 10, 30))
    assert 0 <= r[1] <= r[5] <= r[10] <= r[30] == 100.0
    # without ties the two policies agree, and match a direct argsort computation
    assert r == recall_at_k(sim, gt, ks=(1, 5, 10, 30), ties="index")
    order = np.argsort(-sim, axis=1)
    direct = np.mean([len(set(order[q, :5]) & set(gt[q])) > 0 for q in range(50)]) * 100
    assert r[5] == pytest.approx(direct)


def test_chunked_rows_match_unchunked() -> None:
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 3, size=(37, 11)).astype(float)  # many ties
    gt = [[int(rng.integers(11))] for _ in range(37)]
    full = first_hit_ranks(sim, gt)
    assert first_hit_ranks(sim, gt, rows_per_block=4).tolist() == full.tolist()


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(InputError, match="no correct item"):
        first_hit_ranks(np.zeros((2, 3)), [[0], []])
    with pytest.raises(InputError, match="outside"):
        first_hit_ranks(np.zeros((1, 3)), [[3]])
    with pytest.raises(InputError, match="NaN"):
        first_hit_ranks(np.array([[np.nan, 0.0]]), [[0]])
    with pytest.raises(InputError, match="2 texts"):
        retrieval_metrics(np.zeros((2, 3)), [[0], [1]])
    with pytest.raises(InputError, match="no caption"):
        retrieval_metrics(np.zeros((3, 2)), [[0], [1]])
    with pytest.raises(InputError, match="ties"):
        first_hit_ranks(np.zeros((1, 2)), [[0]], ties="optimistic")  # type: ignore[arg-type]


def test_hard_negative_accuracy_ties_are_misses() -> None:
    scores = [
        np.array([0.9, 0.1, 0.8]),  # correct
        np.array([0.5, 0.5, 0.1]),  # tie with a negative: miss
        np.array([0.2, 0.3]),  # wrong
        np.array([0.7, 0.69999]),  # correct by a hair
    ]
    assert hard_negative_accuracy(scores) == 50.0
    with pytest.raises(InputError, match="no negative"):
        hard_negative_accuracy([np.array([1.0])])
    with pytest.raises(InputError, match="at least one"):
        hard_negative_accuracy([])


def test_topk_accuracy_by_hand() -> None:
    scores = np.array(
        [
            [0.1, 0.9, 0.3],  # label 1: rank 0
            [0.5, 0.5, 0.0],  # label 0: ties with class 1 -> rank 1 (pessimistic)
            [0.2, 0.3, 0.1],  # label 2: rank 2
            [0.4, 0.4, 0.4],  # label 2: all tie -> rank 2
        ]
    )
    labels = [1, 0, 2, 2]
    assert topk_accuracy(scores, labels, 1) == 25.0
    assert topk_accuracy(scores, labels, 2) == 50.0
    assert topk_accuracy(scores, labels, 3) == 100.0
    assert topk_accuracy(scores, labels, 1, ties="index") == 50.0  # row 1: class 0 comes first by index
