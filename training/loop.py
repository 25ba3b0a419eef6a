"""The training loop: data -> models -> (D step, G step) per iteration -> logs, samples, checkpoints.

`train(cfg)` starts a run in `cfg.out`; `resume(run_dir)` continues one from its last checkpoint
and reaches the same weights as an uninterrupted run would (same step count, same data order),
because every step's randomness is derived from (seed, step, rank) rather than carried state.

Run under `torchrun --nproc_per_node K` it trains data-parallel with DistributedDataParallel
(NCCL on GPUs, gloo on CPUs): each process takes every K-th image of the shared epoch order, so
the global batch is K x --batch-size; process 0 writes the run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training import checkpoints
from training.config import TrainConfig
from training.data import DATASETS, load_split
from training.models import ARCHS, build_discriminator, build_generator, from_uint8
from training.sampling import TorchSource
from training.reporting import (MetricsLog, TensorBoardLog, plot_losses, save_progress_gif,
                                save_sample_grid)

log = logging.getLogger(__name__)

#: Grids show the images of seeds 0..15 (through the service's seed rule), so the samples in a
#: run directory are the very images the exported model will serve for those seeds.
GRID_SEEDS = range(16)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM arrived; a checkpoint of the last completed step has been written."""


class NonFiniteLoss(RuntimeError):
    """A loss went NaN/inf; training stops and the last good checkpoint stays as it was."""


@dataclass
class Placement:
    """Where this process runs: its device, its rank in a torchrun group, and AMP settings."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None  # None: full fp32

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(cfg: TrainConfig) -> Path:
    """Start a new run in `cfg.out`. Returns the run directory."""
    cfg = cfg.resolved()
    if not cfg.run_id:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        cfg.run_id = f"{cfg.arch}-{cfg.dataset}-{stamp}"
    return _run(cfg, state=None)


def resume(run_dir: str | os.PathLike, steps: int | None = None,
           overrides: dict | None = None) -> Path:
    """Continue a run from `run_dir/checkpoints/last.pt`, optionally to a new total of `steps`."""
    state = checkpoints.load(run_dir)
    cfg = TrainConfig.from_dict(state["config"])
    cfg.out = str(run_dir)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    if steps is not None:
        cfg.steps, cfg.epochs = steps, None
    return _run(cfg, state=state)


# --- the run ----------------------------------------------------------------------------------

def _run(cfg: TrainConfig, state: dict | None) -> Path:
    place = _place(cfg.device, cfg.amp)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    num_classes = len(DATASETS[cfg.dataset].class_names) if cfg.conditional else 0
    data = _Data.load(cfg, place)
    models = _Models.build(cfg, place, num_classes, state)
    start_step = int(state["step"]) if state else 0

    # --- the run directory (process 0 only)
    reporter = None
    if place.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        reporter = _Reporter(cfg, run_dir, resume_step=start_step if state else None)
        log.info("run %s: %s on %s, %d steps of %d images (%d per epoch), G %d params%s",
                 cfg.run_id, cfg.arch, place.device, cfg.steps, data.global_batch,
                 data.steps_per_epoch, sum(p.numel() for p in models.g.parameters()),
                 f", continuing from the checkpoint of step {start_step}" if state else "")

    def save_checkpoint(step: int, name: str = checkpoints.LAST) -> None:
        if place.is_main:
            # The CSV first: after a crash it must hold every step the checkpoint holds, since
            # a resume keeps the rows up to the checkpoint and trains the rest again.
            reporter.metrics.flush()
            checkpoints.save(run_dir / "checkpoints" / name, models.snapshot(cfg, step))

    interrupted = _InterruptFlag()
    step = start_step
    finished = False  # every step done and saved: the ranks may wait for each other at the end
    try:
        with interrupted:
            for step in range(start_step, cfg.steps):
                if interrupted.raised:
                    raise TrainingInterrupted
                started = time.perf_counter()
                real, real_labels = data.batch(step)
                z, fake_labels = _noise(cfg, place, step, num_classes)
                _schedule_lr(models, cfg, step)
                losses = _train_step(models, real, real_labels, z, fake_labels, cfg, place, step)

                # --- bookkeeping: stop before a NaN reaches a checkpoint
                loss_d, loss_g = losses.loss_d, losses.loss_g
                if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                    raise NonFiniteLoss(
                        f"step {step + 1}: loss_d={loss_d.item()}, loss_g={loss_g.item()}; "
                        "try lower learning rates. The last good checkpoint is kept.")
                done = step + 1
                if reporter is not None:
                    epoch_end = done % data.steps_per_epoch == 0
                    reporter.step(done, step // data.steps_per_epoch, done * data.global_batch,
                                  loss_d, loss_g, losses.real_logits, losses.fake_logits,
                                  losses.fake_logits_after, time.perf_counter() - started)
                    if done in cfg.sample_at or epoch_end or done == cfg.steps:
                        reporter.samples(done, models.served, place.device)
                    if _eval_due(cfg, done, epoch_end) and reporter.can_evaluate:
                        fd = reporter.evaluate(done, models.served, place.device)
                        if fd < models.best["fd"]:
                            models.best = {"fd": fd, "step": done}
                            save_checkpoint(done, checkpoints.BEST)
                if done % cfg.checkpoint_every == 0:
                    save_checkpoint(done)
        save_checkpoint(cfg.steps)
        finished = True
    except TrainingInterrupted:
        # Raised between steps, so `step` steps are complete and the state is consistent.
        # (A second Ctrl-C, NonFiniteLoss or any error mid-step saves nothing: the last good
        # checkpoint stays as it was.)
        save_checkpoint(step)
        if place.is_main:
            log.warning("interrupted: checkpoint of step %d saved in %s; continue with "
                        "`dcgan-train resume %s`", step, run_dir, run_dir)
        raise TrainingInterrupted(f"interrupted at step {step}") from None
    finally:
        if reporter is not None:
            reporter.finish()  # the CSV, plots and GIF cover whatever steps were done
        if place.world > 1 and dist.is_initialized():
            if finished:
                # Leave together: a rank that closes its gloo connections while another is
                # still writing its report can make that one abort on the closed peer.
                dist.barrier()
            dist.destroy_process_group()
    return run_dir


# --- the data ----------------------------------------------------------------------------------

@dataclass
class _Data:
    """The whole training split in memory as uint8 (47 MB for MNIST), and the run's length."""

    cfg: TrainConfig
    place: Placement
    images: torch.Tensor
    labels: torch.Tensor
    global_batch: int
    steps_per_epoch: int

    @classmethod
    def load(cls, cfg: TrainConfig, place: Placement) -> "_Data":
        split = load_split(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
        images = torch.from_numpy(split.images[:cfg.train_subset].copy())
        labels = torch.from_numpy(split.labels[:cfg.train_subset].copy())
        global_batch = cfg.batch_size * place.world
        steps_per_epoch = len(images) // global_batch
        if steps_per_epoch == 0:
            raise ValueError(f"{len(images)} training images cannot fill one batch of "
                             f"{global_batch}")
        if cfg.epochs is not None:
            cfg.steps = math.ceil(cfg.epochs * steps_per_epoch)
        elif not cfg.steps:
            cfg.steps = steps_per_epoch  # neither given: one epoch
        cfg.epochs = None  # the run is defined in steps from here on
        return cls(cfg, place, images, labels, global_batch, steps_per_epoch)

    def batch(self, step: int):
        return _batch(self.images, self.labels, self.cfg, self.place, step,
                      self.steps_per_epoch, ARCHS[self.cfg.arch].output_range)


# --- the models ----------------------------------------------------------------------------------

@dataclass
class _Models:
    """G, D, the EMA copy of G, their optimisers and loss scalers, and the best FD so far."""

    g: torch.nn.Module
    d: torch.nn.Module
    ema: torch.nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    g_train: torch.nn.Module  # g, or g wrapped for data-parallel training
    d_train: torch.nn.Module
    num_classes: int
    best: dict

    @classmethod
    def build(cls, cfg: TrainConfig, place: Placement, num_classes: int,
              state: dict | None) -> "_Models":
        torch.manual_seed(cfg.seed)  # initial weights from the run seed: the same on every rank
        g = build_generator(cfg.arch, cfg.latent_dim, num_classes, cfg.g_width).to(place.device)
        d = build_discriminator(cfg.arch, num_classes, cfg.d_width, cfg.d_dropout,
                                classify=cfg.aux_class_weight > 0,
                                twin=cfg.aux_twin).to(place.device)
        # channels_last: the convolutions run 12-17% faster on a CPU thread in this layout
        # (docs/decisions.md); the weights' values, and so checkpoints and exports, are the same.
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
        ema = copy.deepcopy(g).eval().requires_grad_(False) if cfg.ema_decay else None
        # GradScalers matter only for fp16; with bf16 or fp32 they are disabled no-ops.
        use_scaler = place.amp_dtype == torch.float16
        models = cls(g, d, ema, _optimizer(cfg, g, cfg.lr_g), _optimizer(cfg, d, cfg.lr_d),
                     torch.amp.GradScaler("cuda", enabled=use_scaler),
                     torch.amp.GradScaler("cuda", enabled=use_scaler), g, d, num_classes,
                     {"fd": float("inf"), "step": -1})
        if state is not None:
            models.load(state)
        if place.world > 1:
            ids = [place.device.index] if place.device.type == "cuda" else None
            models.g_train = DistributedDataParallel(g, device_ids=ids)
            models.d_train = DistributedDataParallel(d, device_ids=ids)
        return models

    @property
    def served(self) -> torch.nn.Module:
        """The generator that samples, evaluations and exports use: the EMA copy if kept."""
        return self.ema or self.g

    def load(self, state: dict) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.best = dict(state.get("best", self.best))

    def snapshot(self, cfg: TrainConfig, step: int) -> dict:
        return {"config": _as_dict(cfg), "step": step, "run_id": cfg.run_id,
                "num_classes": self.num_classes, "generator": self.g.state_dict(),
                "discriminator": self.d.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "best": self.best}


# --- one step ------------------------------------------------------------------------------------

@dataclass
class _Losses:
    loss_d: torch.Tensor
    loss_g: torch.Tensor
    real_logits: torch.Tensor       # D(x)
    fake_logits: torch.Tensor       # D(G(z)) before the D step
    fake_logits_after: torch.Tensor  # D(G(z)) after it, what G learns from


def _train_step(m: _Models, real, real_labels, z, fake_labels, cfg: TrainConfig,
                place: Placement, step: int) -> _Losses:
    autocast = (torch.autocast(place.device.type, dtype=place.amp_dtype)
                if place.amp_dtype else nullcontext())
    m.g_train.train()
    m.d_train.train()

    # ------------------------------------------------------------------
    # (1) D step: maximise log D(x) + log(1 - D(G(z)))
    # ------------------------------------------------------------------
    aux = cfg.aux_class_weight
    with autocast:
        fake = m.g_train(z, fake_labels)
        both_labels = torch.cat([real_labels, fake_labels]) if m.num_classes else None
        logits = m.d_train(torch.cat([real, fake.detach()]), both_labels, classes=bool(aux))
        if aux:
            logits, classes, twins = logits
        real_logits, fake_logits = logits.float().split(len(real))
        # One-sided label smoothing: D's target for real images is 1 - label_smoothing.
        real_target = torch.full_like(real_logits, 1.0 - cfg.label_smoothing)
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, real_target)
                  + F.binary_cross_entropy_with_logits(fake_logits,
                                                       torch.zeros_like(fake_logits)))
        if aux:  # AC-GAN: D learns the classes from real images only
            loss_d = loss_d + aux * F.cross_entropy(classes[:len(real)].float(), real_labels)
        if aux and twins is not None:  # TAC-GAN: the twin learns them from fakes only
            loss_d = loss_d + aux * F.cross_entropy(twins[len(real):].float(), fake_labels)
    m.opt_d.zero_grad(set_to_none=True)
    m.scaler_d.scale(loss_d).backward()
    m.scaler_d.step(m.opt_d)
    m.scaler_d.update()

    # ------------------------------------------------------------------
    # (2) G step: maximise log D(G(z)) (the non-saturating loss)
    # ------------------------------------------------------------------
    with autocast:
        fake_logits_after = m.d_train(fake, fake_labels, classes=bool(aux))
        if aux:
            fake_logits_after, fake_classes, fake_twins = fake_logits_after
        fake_logits_after = fake_logits_after.float()
        loss_g = F.binary_cross_entropy_with_logits(fake_logits_after,
                                                    torch.ones_like(fake_logits_after))
        if aux:  # and G, to make images D classifies as the class they were asked for
            loss_g = loss_g + aux * F.cross_entropy(fake_classes.float(), fake_labels)
        if aux and fake_twins is not None:  # but not so that the twin finds them easy: the
            # AC-GAN term alone pulls each class toward its easiest images (Gong et al.)
            loss_g = loss_g - (aux * cfg.aux_twin_weight
                               * F.cross_entropy(fake_twins.float(), fake_labels))
    m.opt_g.zero_grad(set_to_none=True)
    m.scaler_g.scale(loss_g).backward()
    m.scaler_g.step(m.opt_g)
    m.scaler_g.update()
    if m.ema is not None:
        _ema_update(m.ema, m.g, cfg.ema_decay, step)
    return _Losses(loss_d, loss_g, real_logits, fake_logits, fake_logits_after)


# --- pieces of a step: data order, noise, EMA ---------------------------------------------

def _batch(images, labels, cfg, place, step, steps_per_epoch, output_range):
    """This process's real batch for `step`: epoch order from (seed, epoch), strided by rank."""
    epoch, index = divmod(step, steps_per_epoch)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(
        cfg.seed * 1_000_003 + epoch))
    global_batch = cfg.batch_size * place.world
    rows = order[index * global_batch:(index + 1) * global_batch][place.rank::place.world]
    x = from_uint8(images[rows].unsqueeze(1), output_range).to(
        place.device, non_blocking=True, memory_format=torch.channels_last)
    return x, labels[rows].to(place.device, non_blocking=True)


def _noise(cfg, place, step, num_classes):
    """z (and fake labels) for `step`: the global batch's, drawn from (seed, step) alone, and
    this process's rows of it, strided by rank as the real batch is; so N ranks together use
    the very noise one process would. Also reseeds torch so dropout is a function of the step."""
    step_seed = (cfg.seed * 1_000_003 + step) * 64
    torch.manual_seed(step_seed + place.rank)
    gen = torch.Generator().manual_seed(step_seed)
    total = cfg.batch_size * place.world
    z = torch.randn(total, cfg.latent_dim, generator=gen)[place.rank::place.world]
    y = (torch.randint(0, num_classes, (total,), generator=gen)[place.rank::place.world]
         .to(place.device) if num_classes else None)
    return z.to(place.device), y


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, g: torch.nn.Module, decay: float, step: int) -> None:
    # Warm-up: early on the average would be dominated by the random initial weights, so the
    # effective decay ramps from 0.1 towards `decay` (after ~10/(1-decay) steps it is `decay`).
    decay = min(decay, (1 + step) / (10 + step))
    # Weights and BN running statistics both move towards G's, so the EMA model exports as is.
    ema_p = [p for p in ema.state_dict().values() if p.dtype.is_floating_point]
    g_p = [p for p in g.state_dict().values() if p.dtype.is_floating_point]
    torch._foreach_lerp_(ema_p, g_p, 1.0 - decay)


def _schedule_lr(m: _Models, cfg: TrainConfig, step: int) -> None:
    """`linear`: constant for the first half of the run, then down to 0 at its last step."""
    scale = 1.0
    if cfg.lr_schedule == "linear":
        half = cfg.steps / 2
        scale = min(1.0, (cfg.steps - step) / half)
    for opt, lr in ((m.opt_g, cfg.lr_g), (m.opt_d, cfg.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * scale


def _optimizer(cfg: TrainConfig, module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(module.parameters(), lr=lr)
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2))


def _eval_due(cfg: TrainConfig, done: int, epoch_end: bool) -> bool:
    if cfg.eval_every < 0:
        return False
    if cfg.eval_every > 0:
        return done % cfg.eval_every == 0
    return epoch_end


def _place(device: str, amp: bool = True) -> Placement:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU "
                           "(is this the CPU build of torch?); use --device cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and cuda)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        amp_dtype = ((torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
                     if amp else None)
    else:
        dev, amp_dtype = torch.device("cpu"), None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Placement(dev, rank, world, amp_dtype)


def _as_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


class _InterruptFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half
    and the checkpoint written on the way out is of a completed step."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.raised:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _Reporter:
    """Process 0's outputs: metrics CSV (+TensorBoard), sample grids, plots, quick evaluations."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume_step: int | None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.metrics = MetricsLog(run_dir / "metrics.csv", resume_from_step=resume_step)
        self.tb = TensorBoardLog(run_dir / "tb") if cfg.tensorboard else None
        self.num_classes = len(DATASETS[cfg.dataset].class_names) if cfg.conditional else 0
        self.bar = None
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.steps, initial=resume_step or 0, unit="step",
                            dynamic_ncols=True)
        self.evaluator = None
        self._eval_file = run_dir / "eval.csv"
        if cfg.eval_every >= 0:
            from training.evaluation import QuickEvaluator
            self.evaluator = QuickEvaluator.for_dataset(cfg, self.num_classes)

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None

    def step(self, done, epoch, seen, loss_d, loss_g, real_logits, fake_logits,
             fake_logits_after, seconds):
        if done % self.cfg.log_every and done != self.cfg.steps:
            if self.bar is not None:
                self.bar.update(1)
            return
        row = {"step": done, "epoch": epoch, "images_seen": seen,
               "loss_d": f"{loss_d.item():.5f}", "loss_g": f"{loss_g.item():.5f}",
               "d_real": f"{torch.sigmoid(real_logits).mean().item():.4f}",
               "d_fake": f"{torch.sigmoid(fake_logits).mean().item():.4f}",
               "d_fake_after": f"{torch.sigmoid(fake_logits_after).mean().item():.4f}",
               "seconds": f"{seconds:.4f}"}
        self.metrics.write(row)
        if self.tb is not None:
            self.tb.scalars({k: float(v) for k, v in row.items()})
        if self.bar is not None:
            self.bar.set_postfix(loss_d=row["loss_d"], loss_g=row["loss_g"],
                                 d_x=row["d_real"], d_gz=row["d_fake"], refresh=False)
            self.bar.update(1)

    def samples(self, done: int, g: torch.nn.Module, device) -> None:
        images, _ = TorchSource(g, self.cfg.dataset, self.cfg.arch, self.num_classes,
                                device).generate(GRID_SEEDS)
        save_sample_grid(images, self.run_dir / "samples" / f"step_{done:07d}.png")
        if self.tb is not None:
            self.tb.grid(images, done)
        self.metrics.flush()

    def evaluate(self, done: int, g: torch.nn.Module, device) -> float:
        scores = self.evaluator.score_generator(g, device)
        columns = ("fd", "kid", "kid_std", "precision", "recall", "inception_score",
                   "min_class_share", "label_accuracy")
        new = not self._eval_file.exists()
        with self._eval_file.open("a") as f:
            if new:
                f.write(",".join(("step", "n") + columns) + "\n")
            f.write(",".join([str(done), str(scores["n"])]
                             + [str(scores.get(c, "")) for c in columns]) + "\n")
        # FD's bias grows as n shrinks, so its figure is given with n; KID is unbiased, and
        # its spread over subsets says how far apart two evaluations must be to mean anything.
        message = (f"step {done}: FD {scores['fd']:.3f} (n={scores['n']}), KID "
                   f"{scores['kid']:.5f} ± {scores['kid_std']:.5f}, precision "
                   f"{scores['precision']:.3f}, recall {scores['recall']:.3f}")
        if self.bar is not None:
            self.bar.write(message)
        else:
            log.info(message)
        return scores["fd"]

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        plot_losses(self.run_dir / "metrics.csv", self.run_dir / "loss_curve.png")
        save_progress_gif(self.run_dir / "samples", self.run_dir / "progress.gif")
