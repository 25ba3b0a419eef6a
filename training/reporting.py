"""What a run leaves behind for people: the metrics CSV, loss curves, sample grids, the GIF,
and (optionally) TensorBoard events. The training loop calls these; none of them trains."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from service.imaging import make_grid

METRIC_FIELDS = ("step", "epoch", "images_seen", "loss_d", "loss_g", "d_real", "d_fake",
                 "d_fake_after", "seconds")


class MetricsLog:
    """Append-only CSV of per-step metrics; on resume, rows past the checkpoint are dropped so
    the re-run steps are not counted twice."""

    def __init__(self, path: Path, resume_from_step: int | None = None):
        self.path = path
        if resume_from_step is not None and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_from_step]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, METRIC_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        elif not path.exists() or resume_from_step is None:
            with path.open("w", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writeheader()
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, METRIC_FIELDS)

    def write(self, row: dict) -> None:
        self._writer.writerow({k: row[k] for k in METRIC_FIELDS})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in METRIC_FIELDS}


def plot_losses(metrics_csv: Path, out_png: Path) -> None:
    """Loss curves (top) and D's outputs (bottom) per iteration, smoothed with a moving mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = read_metrics(metrics_csv)
    if len(m["step"]) == 0:
        return
    window = max(1, len(m["step"]) // 200)

    def smooth(y):
        return np.convolve(y, np.ones(window) / window, mode="valid") if window > 1 else y

    steps = m["step"][window - 1:] if window > 1 else m["step"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(steps, smooth(m["loss_d"]), label="D loss")
    ax1.plot(steps, smooth(m["loss_g"]), label="G loss")
    ax1.set_ylabel("BCE loss")
    ax1.legend()
    ax2.plot(steps, smooth(m["d_real"]), label="D(x)")
    ax2.plot(steps, smooth(m["d_fake"]), label="D(G(z)) before D step")
    ax2.plot(steps, smooth(m["d_fake_after"]), label="D(G(z)) after D step")
    ax2.set_ylabel("mean D output")
    ax2.set_xlabel("iteration")
    ax2.set_ylim(0, 1)
    ax2.legend()
    title = f"moving mean over {window} iterations" if window > 1 else "per iteration"
    fig.suptitle(f"{metrics_csv.parent.name}: {title}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def save_sample_grid(images: np.ndarray, path: Path, scale: int = 4) -> None:
    """A 4x4 (or sqrt(N)-wide) grid of uint8 images [N, 1, H, W], enlarged for viewing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = Image.fromarray(make_grid(images), mode="L")
    grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST).save(path)


def save_progress_gif(samples_dir: Path, out_gif: Path, ms_per_frame: int = 300) -> None:
    frames = [Image.open(p).convert("L") for p in sorted(samples_dir.glob("step_*.png"))]
    if frames:
        frames[0].save(out_gif, save_all=True, append_images=frames[1:], duration=ms_per_frame,
                       loop=0)


class TensorBoardLog:
    """Optional TensorBoard events beside the CSV (needs the `tensorboard` extra)."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tensorboard needs the tensorboard package: "
                               "pip install 'dcgan-digits[tensorboard]'") from exc
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, row: dict) -> None:
        for key in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_after"):
            self.writer.add_scalar(key, row[key], row["step"])

    def grid(self, images: np.ndarray, step: int) -> None:
        self.writer.add_image("samples", make_grid(images)[None], step)

    def close(self) -> None:
        self.writer.close()
