"""evaluate's metrics against scikit-learn's, on random labels and scores.

scikit-learn is a test-only dependency (the ``test`` extra): catsdogs computes its metrics
with numpy, and these tests check that it gets the same numbers as the reference library,
with two and three classes, tied scores, and classes that never occur.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from catsdogs.evaluate import (
    compute_metrics,
    confusion_matrix,
    log_loss,
    precision_recall_f1,
    roc_auc,
)

metrics = pytest.importorskip("sklearn.metrics")

SEEDS = range(8)


def random_case(seed: int, num_classes: int, n: int | None = None,
                ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels covering every class, probability rows (softmax of noise pushed towards the
    true class, so the AUC is neither 0.5 nor 1) and the argmax predictions."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(num_classes * 3, 120))
    true = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)])
    rng.shuffle(true)
    logits = rng.normal(size=(n, num_classes)) + 1.2 * np.eye(num_classes)[true]
    if ties:  # few distinct scores: many ties, which AUC must count one half
        logits = np.round(logits)
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return true, scores.argmax(axis=1), scores


def reference_precision_recall_f1(true, predicted, num_classes):
    return metrics.precision_recall_fscore_support(
        true, predicted, labels=list(range(num_classes)), zero_division=np.nan
    )[:3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_confusion_matrix_precision_recall_f1_match_sklearn(seed, num_classes):
    true, predicted, _ = random_case(seed, num_classes)
    # predictions off the argmax too, so that off-diagonal cells and rare classes occur
    predicted = np.where(np.random.default_rng(seed + 100).random(len(true)) < 0.3,
                         (predicted + 1) % num_classes, predicted)
    matrix = confusion_matrix(true, predicted, num_classes)
    expected = metrics.confusion_matrix(true, predicted, labels=list(range(num_classes)))
    np.testing.assert_array_equal(matrix, expected)
    for ours, theirs in zip(precision_recall_f1(matrix),
                            reference_precision_recall_f1(true, predicted, num_classes),
                            strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_two_class_auc_and_log_loss_match_sklearn(seed, ties):
    true, predicted, scores = random_case(seed, 2, ties=ties)
    assert roc_auc(true, scores) == pytest.approx(metrics.roc_auc_score(true, scores[:, 1]),
                                                  rel=1e-12)
    assert log_loss(true, scores) == pytest.approx(metrics.log_loss(true, scores), rel=1e-9)
    ours = compute_metrics(true, predicted, scores, ["cats", "dogs"])
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(true, predicted))
    assert ours["n"] == len(true)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_three_class_auc_is_sklearn_one_vs_rest_macro(seed, ties):
    """With three classes or more, our ROC AUC is the unweighted mean of the one-vs-rest
    AUCs: scikit-learn's ``multi_class="ovr", average="macro"``."""
    true, _, scores = random_case(seed, 3, ties=ties)
    expected = metrics.roc_auc_score(true, scores, multi_class="ovr", average="macro")
    assert roc_auc(true, scores) == pytest.approx(expected, rel=1e-12)
    assert log_loss(true, scores) == pytest.approx(metrics.log_loss(true, scores), rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_class_with_no_positives(seed):
    """Three classes, the third never the true one (but sometimes predicted): its recall and
    F1 are undefined (None in metrics.json, where scikit-learn says nan for recall and 0 for
    F1), and the ROC AUC is the mean over the two classes that occur, where scikit-learn's
    macro average gives nan."""
    rng = np.random.default_rng(seed)
    true, _, scores = random_case(seed, 2)
    scores = np.column_stack([scores * 0.8, rng.uniform(0.0, 0.2, len(true))])
    scores /= scores.sum(axis=1, keepdims=True)
    predicted = scores.argmax(axis=1)
    predicted[:3] = 2  # the absent class is predicted for a few photos
    labels = [0, 1, 2]
    result = compute_metrics(true, predicted, scores, ["cats", "dogs", "foxes"])

    precision, recall, f1 = reference_precision_recall_f1(true, predicted, 3)
    assert result["precision"]["foxes"] == precision[2] == 0.0
    assert result["recall"]["foxes"] is None and math.isnan(recall[2])
    assert result["f1"]["foxes"] is None and f1[2] == 0.0
    for k, name in enumerate(["cats", "dogs"]):
        assert result["precision"][name] == pytest.approx(precision[k])
        assert result["recall"][name] == pytest.approx(recall[k])
        assert result["f1"][name] == pytest.approx(f1[k])
    assert result["confusion_matrix"][2] == [0, 0, 0]

    present = [metrics.roc_auc_score(true == k, scores[:, k]) for k in (0, 1)]
    assert result["roc_auc"] == pytest.approx(np.mean(present), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that the metric is undefined
        assert math.isnan(metrics.roc_auc_score(true, scores, multi_class="ovr",
                                                labels=labels))
    assert result["log_loss"] == pytest.approx(metrics.log_loss(true, scores, labels=labels),
                                               rel=1e-9)
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(true, predicted))


def test_one_class_only_and_no_photos_give_none():
    """Every photo of one class: no ROC AUC (scikit-learn: nan); no photos: no metrics."""
    true = np.zeros(6, dtype=int)
    scores = np.tile([0.7, 0.3], (6, 1))
    result = compute_metrics(true, scores.argmax(axis=1), scores, ["cats", "dogs"])
    assert result["roc_auc"] is None
    assert result["accuracy"] == 1.0 and result["recall"] == {"cats": 1.0, "dogs": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(metrics.roc_auc_score(true, scores[:, 1]))
    empty = compute_metrics(np.zeros(0, dtype=int), np.zeros(0, dtype=int),
                            np.zeros((0, 2)), ["cats", "dogs"])
    assert empty["n"] == 0
    assert empty["accuracy"] is empty["roc_auc"] is empty["log_loss"] is None
    assert empty["precision"] == empty["recall"] == {"cats": None, "dogs": None}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_balanced_accuracy_matches_sklearn(seed, num_classes):
    true, predicted, scores = random_case(seed, num_classes)
    # a rare class, so that balanced and plain accuracy differ
    keep = (true != 0) | (np.arange(len(true)) % 4 == 0)
    true, predicted, scores = true[keep], predicted[keep], scores[keep]
    names = [f"c{k}" for k in range(num_classes)]
    ours = compute_metrics(true, predicted, scores, names)
    assert ours["balanced_accuracy"] == pytest.approx(
        metrics.balanced_accuracy_score(true, predicted), rel=1e-12)
    assert ours["recall"]["c0"] == pytest.approx(
        metrics.recall_score(true, predicted, labels=[0], average=None)[0], rel=1e-12)
