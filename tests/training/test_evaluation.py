"""`evaluate`'s sanity properties with the shipped classifier: real data scores near the floor,
noise far off, a collapsed generator is flagged; KID and precision / recall behave as defined and
agree with torchmetrics and prdc; the Inception FID path; and its JSON over a real model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


def test_cas_learns_from_the_labels_asked_for(mnist):
    # The Classification Accuracy Score trains on the generated images under the labels they
    # were asked for: images of the right class score as the real baseline does, the same
    # images under labels one class off teach the wrong class and score near zero.
    _, train, test, _ = mnist
    from training.evaluation import classification_accuracy_score
    images, labels = train.images, train.labels
    right = classification_accuracy_score(images, labels, images, labels, test, 10)
    wrong = classification_accuracy_score(images, (labels + 1) % 10, images, labels, test, 10)
    assert right["generated"] == right["real"] > 0.8  # the same data, the same recipe
    assert wrong["generated"] < 0.1 < 0.8 < wrong["real"]
    assert right["test"] == f"mnist test split ({len(test)})"
    assert right["train_images"] == len(images) and right["epochs"] == 5


def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(1).normal(size=(500, 16))
    assert frechet_distance(feats, feats) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(16, rel=1e-6)


def test_evaluate_an_onnx_file_end_to_end(tiny_cond_onnx, tiny_onnx, subset_dir):
    from training.evaluation import evaluate
    scores = evaluate(str(tiny_cond_onnx), n=300, data_dir=subset_dir)
    assert scores["n"] == 300 and scores["dataset"] == "mnist" and scores["conditional"]
    assert scores["fd"] > 0 and 1 <= scores["inception_score"] <= 10
    assert 0 <= scores["label_accuracy"] <= 1 and len(scores["class_shares"]) == 10
    assert 0 <= scores["cas"]["generated"] <= 1 and scores["cas"]["real"] > 0.5
    assert "cas" not in evaluate(str(tiny_onnx), n=300, data_dir=subset_dir)  # no labels


def test_evaluate_at_a_truncation_scores_the_truncated_images(tiny_cond_onnx, subset_dir):
    from training.evaluation import evaluate
    plain = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir)
    truncated = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir, psi=0.5)
    again = evaluate(str(tiny_cond_onnx), n=200, data_dir=subset_dir, psi=0.5)
    assert plain["psi"] == 1.0 and truncated["psi"] == 0.5
    assert truncated["fd"] != plain["fd"] and truncated["fd"] == again["fd"]


# --- KID and precision / recall: their properties, and agreement with the field's libraries ----

def _bundled_model_images(n: int) -> np.ndarray:
    from training.sampling import load_generator_source
    images, _ = load_generator_source("models/mnist-dcgan.onnx").generate(range(n))
    return images


def test_kid_is_unbiased_between_halves_of_one_set_and_large_for_noise(mnist):
    """Two halves of the test split come from one distribution: the unbiased estimate is
    centred on 0 (within its spread), where FD of the same halves would not be."""
    from training.evaluation import kernel_inception_distance
    clf, train, _, ref = mnist
    noise, _ = features_and_probs(clf, np.random.default_rng(0).integers(
        0, 256, (500, 1, 28, 28), dtype=np.uint8))
    kid_half, std_half = kernel_inception_distance(ref[:500], ref[500:], subsets=20,
                                                   subset_size=400)
    kid_noise, _ = kernel_inception_distance(ref, noise, subsets=20, subset_size=400)
    assert abs(kid_half) < 2 * std_half
    assert frechet_distance(ref[:500], ref[500:]) > 5  # FD's small-sample bias
    assert kid_noise > 50 * std_half


def test_precision_and_recall_tell_quality_from_coverage(mnist):
    """A set of only 1s is precise (inside the real manifold) but covers little of it; noise
    covers none of it. (Noise can still land inside the large balls of outlying real images,
    a known weakness of k-NN precision, so its precision is not asserted.)"""
    from training.evaluation import precision_recall
    clf, train, _, ref = mnist
    real, _ = features_and_probs(clf, train.images[:1000, None])
    ones, _ = features_and_probs(clf, train.images[train.labels == 1][:, None])
    noise, _ = features_and_probs(clf, np.random.default_rng(0).integers(
        0, 256, (500, 1, 28, 28), dtype=np.uint8))
    p_real, r_real = precision_recall(ref, real)
    p_ones, r_ones = precision_recall(ref, ones)
    _, r_noise = precision_recall(ref, noise)
    assert p_real > 0.6 and r_real > 0.6
    assert p_ones > 0.6 and r_ones < 0.3 * r_real
    assert r_noise < 0.05


class _ClassifierFeatures(torch.nn.Module):
    """Our classifier's feature layer as the libraries take a feature extractor: uint8 images
    in, [N, 128] features out (float64, as ours are computed)."""

    num_features = 128

    def __init__(self, clf):
        super().__init__()
        self.clf = clf

    def forward(self, images):
        return self.clf(images.float() / 255.0)[0].double()


def test_fd_kid_precision_recall_agree_with_torchmetrics_and_prdc(mnist):
    """The same features through torchmetrics (FID and KID with our classifier as the feature
    extractor) and prdc (Naeem et al.'s reference code for k-NN precision / recall). KID over
    one subset as large as both sets is the exact unbiased MMD², so no random draw differs."""
    prdc = pytest.importorskip("prdc")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    from training.evaluation import kernel_inception_distance, precision_recall

    clf, _, test, ref = mnist
    fake_images = _bundled_model_images(1000)
    fake, _ = features_and_probs(clf, fake_images)
    n = min(len(ref), len(fake))

    extractor = _ClassifierFeatures(clf)
    fid = FrechetInceptionDistance(feature=extractor)
    kid = KernelInceptionDistance(feature=extractor, subsets=1, subset_size=n)
    for metric in (fid, kid):
        metric.update(torch.from_numpy(test.images[:n, None].copy()), real=True)
        metric.update(torch.from_numpy(fake_images[:n].copy()), real=False)

    ours_kid, _ = kernel_inception_distance(ref[:n], fake[:n], subsets=1, subset_size=n)
    theirs_kid, _ = kid.compute()
    assert ours_kid == pytest.approx(theirs_kid.item(), rel=1e-6)
    assert frechet_distance(fake[:n], ref[:n]) == pytest.approx(fid.compute().item(), rel=1e-3)

    theirs = prdc.compute_prdc(ref, fake, nearest_k=3)
    assert precision_recall(ref, fake, k=3) == pytest.approx(
        (theirs["precision"], theirs["recall"]), abs=1e-9)
    assert 0.3 < theirs["precision"] < 1 and 0.3 < theirs["recall"] < 1  # a real comparison


def test_kid_subsets_and_their_spread_agree_with_torchmetrics(mnist):
    """Over many random subsets smaller than the sets, our KID and torchmetrics' draw other
    rows (numpy's generator against torch's) but estimate the same thing: the means agree
    within their standard errors, and the spreads (the figure reported beside KID) agree."""
    from torchmetrics.image.kid import KernelInceptionDistance
    from training.evaluation import kernel_inception_distance
    clf, _, test, ref = mnist
    fake_images = _bundled_model_images(1000)
    fake, _ = features_and_probs(clf, fake_images)
    n, subsets, size = min(len(ref), len(fake)), 200, 100
    torch.manual_seed(0)
    kid = KernelInceptionDistance(feature=_ClassifierFeatures(clf), subsets=subsets,
                                  subset_size=size)
    kid.update(torch.from_numpy(test.images[:n, None].copy()), real=True)
    kid.update(torch.from_numpy(fake_images[:n].copy()), real=False)
    theirs_mean, theirs_std = (v.item() for v in kid.compute())
    ours_mean, ours_std = kernel_inception_distance(ref[:n], fake[:n], subsets=subsets,
                                                    subset_size=size)
    error = np.hypot(ours_std, theirs_std) / np.sqrt(subsets)
    assert abs(ours_mean - theirs_mean) < 4 * error, (ours_mean, theirs_mean, error)
    assert 0.8 < ours_std / theirs_std < 1.25, (ours_std, theirs_std)
    assert ours_std > 0.05 * abs(ours_mean)  # subsets really differ: a spread to compare


def test_evaluate_reports_kid_and_precision_recall(tiny_cond_onnx, subset_dir):
    from training.evaluation import evaluate
    scores = evaluate(str(tiny_cond_onnx), n=300, data_dir=subset_dir)
    assert scores["kid_std"] > 0 and scores["kid"] > 0
    assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1


# --- the conventional Inception FID, through a stand-in for inception-2015-12-05.pt ------------

class _StandInInception(torch.nn.Module):
    """The calling convention of the StyleGAN2-ADA metrics' TorchScript Inception: uint8 RGB
    [N, 3, H, W] in, resized to 299x299 inside, `return_features=True` gives pool features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.float() / 127.5 - 1, size=(299, 299),
                                            mode="bilinear", align_corners=False)
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return features if return_features else self.fc(features)


@pytest.fixture(scope="module")
def stand_in_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_StandInInception()), str(path))
    return path


def test_evaluate_with_inception_weights_adds_the_inception_fid(stand_in_inception, subset_dir,
                                                                tmp_path, capsys):
    from training.cli import main
    from training.evaluation import inception_features, load_inception
    out = tmp_path / "scores.json"
    assert main(["evaluate", "models/mnist-dcgan.onnx", "--samples", "200", "--data-dir",
                 str(subset_dir), "--inception-weights", str(stand_in_inception),
                 "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    inception = scores["inception"]
    assert inception["dims"] == 8 and inception["weights"] == str(stand_in_inception)
    # The figure is the FD of the network's own features of the same images: recompute it.
    net = load_inception(str(stand_in_inception))
    test = load_split("mnist", "test", subset_dir, download=False)
    real = inception_features(net, test.images[:, None])
    fake = inception_features(net, _bundled_model_images(200))
    assert inception["fid"] == pytest.approx(frechet_distance(fake, real), abs=1e-4)
    assert inception["fid"] > 0 and inception["kid_std"] > 0


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a TorchScript archive", "is not a TorchScript file"),
])
def test_bad_inception_weights_are_refused_before_any_work(content, message, subset_dir,
                                                           tmp_path, capsys):
    from training.cli import main
    path = tmp_path / "inception.pt"
    if content is not None:
        path.write_bytes(content)
    assert main(["evaluate", "models/mnist-dcgan.onnx", "--samples", "100", "--data-dir",
                 str(subset_dir), "--inception-weights", str(path)]) == 1
    assert message in capsys.readouterr().err
