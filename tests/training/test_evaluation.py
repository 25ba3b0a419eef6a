"""`evaluate`'s sanity properties with the shipped classifier: real data scores near the floor,
noise far off, a collapsed generator is flagged; and its JSON over a real model file."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_split
from training.evaluation import (features_and_probs, frechet_distance, load_classifier,
                                 score_images)


@pytest.fixture(scope="module")
def mnist(subset_dir):
    clf = load_classifier("mnist")
    train = load_split("mnist", "train", subset_dir, download=False)
    test = load_split("mnist", "test", subset_dir, download=False)
    ref, _ = features_and_probs(clf, test.images[:, None])
    return clf, train, test, ref


def test_the_shipped_classifier_recognises_the_test_digits(mnist):
    clf, _, test, _ = mnist
    _, probs = features_and_probs(clf, test.images[:, None])
    assert (probs.argmax(1) == test.labels).mean() > 0.97


def test_real_data_is_near_the_floor_and_noise_far_off(mnist):
    clf, train, _, ref = mnist
    real = score_images(clf, train.images[:1000, None], ref)
    rng = np.random.default_rng(0)
    noise = score_images(clf, rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8), ref)
    assert real["fd"] * 20 < noise["fd"]
    assert real["inception_score"] > 8 > noise["inception_score"]
    assert not real["mode_collapse"] and noise["mode_collapse"]


def test_a_collapsed_generator_is_flagged(mnist):
    clf, train, _, ref = mnist
    ones = train.images[train.labels == 1][:1]
    collapsed = score_images(clf, np.repeat(ones[:, None], 1000, axis=0), ref)
    real = score_images(clf, train.images[:1000, None], ref)
    assert collapsed["mode_collapse"] and collapsed["min_class_share"] == 0
    assert collapsed["fd"] > 10 * real["fd"]
    assert collapsed["inception_score"] == pytest.approx(1.0, abs=0.01)


def test_label_accuracy_of_real_images_under_their_own_labels(mnist):
    clf, train, _, ref = mnist
    scores = score_images(clf, train.images[:500, None], ref, train.labels[:500])
    assert scores["label_accuracy"] > 0.97
    shuffled = score_images(clf, train.images[:500, None], ref, np.roll(train.labels[:500], 1))
    assert shuffled["label_accuracy"] < 0.3


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(1).normal(size=(500, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(16, rel=1e-6)


def test_evaluate_an_onnx_file_end_to_end(tiny_cond_onnx, subset_dir):
    from training.evaluation import evaluate
    scores = evaluate(str(tiny_cond_onnx), n=300, data_dir=subset_dir)
    assert scores["n"] == 300 and scores["dataset"] == "mnist" and scores["conditional"]
    assert scores["fd"] > 0 and 1 <= scores["inception_score"] <= 10
    assert 0 <= scores["label_accuracy"] <= 1 and len(scores["class_shares"]) == 10


def test_evaluate_at_a_truncation_scores_the_truncated_images(tiny_cond_onnx, subset_dir):
    from training.evaluation import evaluate
    plain = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir)
    truncated = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir, psi=0.5)
    again = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir, psi=0.5)
    assert plain["psi"] == 1.0 and truncated["psi"] == 0.5
    assert truncated["fd"] != plain["fd"] and truncated["fd"] == again["fd"]
