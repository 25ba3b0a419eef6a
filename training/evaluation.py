"""Scoring generators against real data, with a small classifier this project trains and ships.

Inception weights cannot be downloaded here, and Inception features say little about 28x28
digits anyway, so the scores use a small CNN trained on the dataset's own training split
(`training/assets/classifier-<dataset>.pt`, rebuilt with `dcgan-train train-classifier`):

* **Fréchet distance (FD)** between Gaussian fits of the classifier's 128-d penultimate
  features of generated images and of the held-out test split (lower is better; real train vs
  real test is the floor);
* **Kernel Inception Distance (KID)** on the same features (Bińkowski et al., 2018): the
  unbiased MMD² with the cubic polynomial kernel, averaged over random subsets of 1,000 (100 of
  them), with its standard deviation over the subsets. Unbiased, so unlike FD its expectation
  does not depend on how many images were scored, and its spread says how noisy the figure is;
* **precision and recall** (Kynkäänniemi et al., 2019): the share of generated images inside
  the real images' k-NN manifold (k = 3), and the share of real images inside the generated
  ones': quality and coverage as two numbers;
* **classifier Inception Score**: exp E[KL(p(y|x) || p(y))], at most the number of classes;
* **class coverage**: the share of each predicted class, its normalised entropy and the
  smallest share, with `mode_collapse` flagged when a class is nearly absent;
* for conditional models, **label accuracy**: the share of images classified as the class
  they were asked for, and the **Classification Accuracy Score** (Ravuri & Vinyals, 2019): a
  classifier of the same architecture trained from scratch on the generated images alone,
  under the labels asked for, tested on the real test split, beside the same classifier
  trained on as many real images.

Images are generated for seeds 0..N-1 through the service's seed rule (labels seed mod 10 for
conditional models), so the scores describe what the service serves. The KID and precision /
recall figures agree with torchmetrics' and prdc's on the same features (tested); with
`--inception-weights`, `evaluate` also gives the conventional Inception FID and KID.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import DATASETS, load_split

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
FEATURE_DIM = 128
#: Below this share of samples a class counts as missing (uniform is 10%).
COLLAPSE_MIN_SHARE = 0.02
#: Below this normalised entropy of the class histogram the samples count as collapsed.
COLLAPSE_MIN_ENTROPY = 0.9
#: KID's subsets and their size (torch-fidelity's and torchmetrics' defaults).
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
#: The k of the k-NN manifolds of precision and recall (the paper's and torch-fidelity's).
PR_NEIGHBOURS = 3
#: Epochs of the classifiers the Classification Accuracy Score trains (on generated images and
#: on as many real ones): one recipe for both, so only the data differs.
CAS_EPOCHS = 5


class Classifier(nn.Module):
    """Two conv blocks and a 128-unit feature layer: ~99% on MNIST, ~91% on Fashion-MNIST."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 64 x 7 x 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),    # 128
        )
        self.dropout = nn.Dropout(0.3)
        self.logits = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [N, 1, 28, 28] in [0, 1]. Returns (features [N, 128], logits [N, classes])."""
        h = self.features(x)
        return h, self.logits(self.dropout(h))


def classifier_path(dataset: str) -> Path:
    return ASSETS / f"classifier-{dataset}.pt"


def load_classifier(dataset: str) -> Classifier:
    path = classifier_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation classifier for {dataset} at {path}: build it with "
                                f"`dcgan-train train-classifier --dataset {dataset}`")
    clf = Classifier(len(DATASETS[dataset].class_names))
    clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return clf.eval()


def fit_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int,
                   batch_size: int = 128, seed: int = 0) -> Classifier:
    """A `Classifier` trained from scratch on uint8 images [N, 28, 28] (or [N, 1, 28, 28])
    under int labels [N]."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.array(images, dtype=np.uint8).reshape(len(images), 1, 28, 28))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    clf = Classifier(num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        clf.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, max(len(x) - batch_size, 0) + 1, batch_size):
            rows = order[i:i + batch_size]
            _, logits = clf(x[rows].float() / 255.0)
            loss = F.cross_entropy(logits, y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info("classifier epoch %d: last loss %.4f", epoch + 1, loss.item())
    return clf.eval()


def accuracy_on(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    _, probs = features_and_probs(clf, images.reshape(len(images), 1, 28, 28))
    return float((probs.argmax(1) == labels).mean())


def train_classifier(dataset: str, data_dir=None, epochs: int = 2, batch_size: int = 128,
                     seed: int = 0, out: Path | None = None, train_subset: int | None = None
                     ) -> dict:
    """Train the evaluation classifier on the train split; report its test accuracy."""
    train = load_split(dataset, "train", data_dir)
    test = load_split(dataset, "test", data_dir)
    images, labels = train.images[:train_subset], train.labels[:train_subset]
    clf = fit_classifier(images, labels, len(DATASETS[dataset].class_names), epochs,
                         batch_size, seed)
    accuracy = accuracy_on(clf, test.images, test.labels)
    out = out or classifier_path(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clf.state_dict(), out)
    return {"dataset": dataset, "test_accuracy": accuracy, "path": str(out),
            "train_images": len(images), "epochs": epochs}


@torch.no_grad()
def features_and_probs(clf: Classifier, images: np.ndarray, batch: int = 1000
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Classifier features [N, 128] and class probabilities [N, C] of uint8 images [N,1,28,28]."""
    feats, probs = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i:i + batch])).float() / 255.0  # a writable copy
        h, logits = clf(x)
        feats.append(h.double().numpy())
        probs.append(torch.softmax(logits.double(), 1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussian fits of two feature sets [N, D] (the FID formula, other features)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr sqrt(S1 S2) = Tr sqrt(R S2 R) with R = sqrt(S1): a symmetric PSD product, so eigh is
    # exact and stable where a general sqrtm of S1 S2 would need complex arithmetic.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = 0
                              ) -> tuple[float, float]:
    """KID of feature sets a [N, D] and b [M, D]: (mean, std) of the unbiased MMD² with kernel
    k(x, y) = (x.y / D + 1)^3 over `subsets` random subsets of `subset_size` rows of each
    (fewer rows when a set is smaller). A subset as large as both sets is the exact MMD²."""
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        values.append(_unbiased_mmd2(x, y))
    return float(np.mean(values)), float(np.std(values))


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                 + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS,
                     chunk: int = 2000) -> tuple[float, float]:
    """Improved precision and recall: the share of `fake` inside the union of the balls around
    each real point reaching its k-th nearest real neighbour, and the share of `real` inside
    the fakes' balls. Distances are computed a chunk of rows at a time (10k x 10k fits)."""
    real_radii = _kth_neighbour_distance(real, k, chunk)
    fake_radii = _kth_neighbour_distance(fake, k, chunk)
    fake_inside = np.zeros(len(fake), bool)
    real_inside = np.zeros(len(real), bool)
    for i in range(0, len(real), chunk):
        d = _distances(real[i:i + chunk], fake)                       # [chunk, len(fake)]
        fake_inside |= (d <= real_radii[i:i + chunk, None]).any(0)
        real_inside[i:i + chunk] = (d <= fake_radii[None, :]).any(1)
    return float(fake_inside.mean()), float(real_inside.mean())


def _kth_neighbour_distance(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    radii = np.empty(len(x))
    for i in range(0, len(x), chunk):
        d = _distances(x[i:i + chunk], x)
        radii[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0, None))


def inception_score(probs: np.ndarray) -> float:
    marginal = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(1)
    return float(math.exp(kl.mean()))


def class_coverage(probs: np.ndarray) -> dict:
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    shares = counts / counts.sum()
    nz = shares[shares > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(len(shares)))
    min_share = float(shares.min())
    return {"class_shares": [round(float(s), 4) for s in shares],
            "class_entropy": round(entropy, 4), "min_class_share": round(min_share, 4),
            "mode_collapse": bool(min_share < COLLAPSE_MIN_SHARE or entropy < COLLAPSE_MIN_ENTROPY)}


def score_images(clf: Classifier, images: np.ndarray, reference_feats: np.ndarray,
                 requested_labels: np.ndarray | None = None) -> dict:
    feats, probs = features_and_probs(clf, images)
    kid, kid_std = kernel_inception_distance(reference_feats, feats)
    precision, recall = precision_recall(reference_feats, feats)
    scores = {"n": len(images), "fd": round(frechet_distance(feats, reference_feats), 4),
              "kid": round(kid, 5), "kid_std": round(kid_std, 5),
              "precision": round(precision, 4), "recall": round(recall, 4),
              "inception_score": round(inception_score(probs), 4), **class_coverage(probs)}
    if requested_labels is not None:
        scores["label_accuracy"] = round(float((probs.argmax(1) == requested_labels).mean()), 4)
    return scores


def classification_accuracy_score(images: np.ndarray, labels: np.ndarray, real: np.ndarray,
                                  real_labels: np.ndarray, test, num_classes: int,
                                  epochs: int = CAS_EPOCHS) -> dict:
    """Classification Accuracy Score (Ravuri & Vinyals, 2019): a classifier trained on the
    generated images alone, under the labels they were asked for, tested on the real test
    split; beside it the same classifier, same recipe, trained on as many real images. Where
    the generated images miss what tells the classes apart, the first falls below the second
    even when FD and label accuracy look good."""
    generated = fit_classifier(images, labels, num_classes, epochs)
    on_real = fit_classifier(real, real_labels, num_classes, epochs)
    return {"generated": round(accuracy_on(generated, test.images, test.labels), 4),
            "real": round(accuracy_on(on_real, test.images, test.labels), 4),
            "train_images": len(images), "epochs": epochs,
            "test": f"{test.dataset} test split ({len(test)})"}


# --- generating what to score -----------------------------------------------------------------

def evaluate(model: str, n: int = 10000, data_dir=None, dataset: str | None = None,
             device: str = "cpu", psi: float = 1.0, inception_weights: str | None = None,
             cas: bool = True) -> dict:
    """Score a checkpoint, an ONNX file, or `real` (the train split) against the test split;
    `psi` < 1 truncates the latents (the contract's latent-walk rule). With
    `inception_weights`, also the conventional Inception FID and KID; with `cas`, the
    Classification Accuracy Score of a labelled source (a conditional model, or `real`)."""
    from training.sampling import load_generator_source
    if model == "real":
        if dataset is None:
            raise ValueError("`evaluate real` needs --dataset")
        train = load_split(dataset, "train", data_dir)
        images, labels, meta = train.images[:n, None], None, {"model": "real train split"}
        cas_labels = train.labels[:n]
    else:
        source = load_generator_source(model, device=device)
        dataset = dataset or source.dataset
    # The classifier, the Inception network and the test split first: a missing one fails now,
    # not after generating.
    clf = load_classifier(dataset)
    inception = load_inception(inception_weights, device) if inception_weights else None
    test = load_split(dataset, "test", data_dir)
    if model != "real":
        images, labels = source.generate(range(n), psi=psi)
        meta = {"model": str(model), "arch": source.arch, "conditional": source.num_classes > 0,
                "psi": psi}
        cas_labels = labels
    ref_feats, _ = features_and_probs(clf, test.images[:, None])
    scores = score_images(clf, images, ref_feats, labels)
    if cas and cas_labels is not None:
        if model != "real":  # `real` has it loaded already (read and hashed: 47 MB)
            train = load_split(dataset, "train", data_dir)
        scores["cas"] = classification_accuracy_score(
            images, cas_labels, train.images[:n], train.labels[:n], test,
            len(DATASETS[dataset].class_names))
    if inception is not None:
        real = inception_features(inception, test.images[:, None], device)
        fake = inception_features(inception, images, device)
        kid, kid_std = kernel_inception_distance(real, fake)
        scores["inception"] = {"weights": str(inception_weights), "dims": real.shape[1],
                               "fid": round(frechet_distance(fake, real), 4),
                               "kid": round(kid, 5), "kid_std": round(kid_std, 5)}
    return {**meta, "dataset": dataset, "reference": f"{dataset} test split ({len(test)})",
            **scores}


# --- the conventional Inception network, where the user has its weights ------------------------

def load_inception(path: str, device: str = "cpu") -> torch.jit.ScriptModule:
    """The FID Inception network as TorchScript: `inception-2015-12-05.pt`, the file NVIDIA's
    StyleGAN2-ADA / StyleGAN3 metrics and clean-fid use (the TF FID graph's weights). It takes
    uint8 RGB images [N, 3, H, W], resizes them to 299x299 itself, and with
    `return_features=True` gives the 2048-d pool features."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--inception-weights {path}: no such file. It cannot be "
                                "downloaded from here: fetch inception-2015-12-05.pt (the "
                                "StyleGAN2-ADA metrics file) on a machine with internet access")
    try:
        net = torch.jit.load(path, map_location=device)
    except RuntimeError as e:
        raise ValueError(f"--inception-weights {path} is not a TorchScript file "
                         f"(inception-2015-12-05.pt is one): {e}") from None
    return net.eval()


@torch.no_grad()
def inception_features(net: torch.jit.ScriptModule, images: np.ndarray, device: str = "cpu",
                       batch: int = 200) -> np.ndarray:
    """Features of grey uint8 images [N, 1, 28, 28], repeated to three channels as FID
    implementations do for MNIST."""
    feats = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i:i + batch])).to(device).expand(-1, 3, -1, -1)
        feats.append(net(x, return_features=True).double().cpu().numpy())
    return np.concatenate(feats)


#: Real images the best checkpoint is chosen against: the last this many of the train split.
SELECTION_IMAGES = 10000


class QuickEvaluator:
    """The scores of a generator in training, which keep the best step (checkpoints/best.pt).

    Chosen on what the model's card does not report on, so the card's figures are not picked
    for: seeds from 10**6 (the card scores seeds 0..9,999) against the last SELECTION_IMAGES
    images of the train split (the card scores against the test split, which training never
    reads)."""

    def __init__(self, clf: Classifier, ref_feats: np.ndarray, n: int, cfg, num_classes: int):
        self.clf, self.ref_feats, self.n = clf, ref_feats, n
        self.cfg, self.num_classes = cfg, num_classes

    @classmethod
    def for_dataset(cls, cfg, num_classes: int) -> "QuickEvaluator | None":
        if not classifier_path(cfg.dataset).is_file():
            log.info("no classifier for %s: no evaluations during training", cfg.dataset)
            return None
        clf = load_classifier(cfg.dataset)
        train = load_split(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
        ref, _ = features_and_probs(clf, train.images[-SELECTION_IMAGES:, None])
        return cls(clf, ref, cfg.eval_samples, cfg, num_classes)

    def score_generator(self, g: torch.nn.Module, device) -> dict:
        # Seeds far from 0..15 so the scored set is not the sample grid's.
        from training.sampling import TorchSource
        source = TorchSource(g, self.cfg.dataset, self.cfg.arch, self.num_classes, device)
        images, labels = source.generate(range(10**6, 10**6 + self.n))
        return score_images(self.clf, images, self.ref_feats, labels)
