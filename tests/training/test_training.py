"""The training loop end to end on the committed subset: files, determinism, resume, Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from tests.conftest import PYTHON, SUBSET_DIR, python_env, tiny_config
from training import checkpoints
from training.config import TrainConfig
from training.loop import resume, train
from training.models import ARCHS, build_discriminator, build_generator


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _weights_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_a_few_hundred_steps_give_finite_losses_and_every_run_file(tmp_path):
    run = train(tiny_config(tmp_path / "run", steps=200, sample_at=[1, 100],
                            checkpoint_every=100))
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 201))
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_after"):
        values = np.array([float(r[key]) for r in rows])
        assert np.isfinite(values).all(), key
    # D's outputs are probabilities and the losses move away from their initial values.
    assert all(0 <= float(r["d_real"]) <= 1 for r in rows)
    assert float(rows[0]["loss_d"]) != float(rows[-1]["loss_d"])
    # 512 images / batch 32 = 16 steps per epoch: grids at 1, 100 and every epoch end.
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids[:2] == ["step_0000001.png", "step_0000016.png"]
    assert "step_0000100.png" in grids and "step_0000200.png" in grids
    for name in ("config.json", "loss_curve.png", "progress.gif", "checkpoints/last.pt"):
        assert (run / name).stat().st_size > 0, name
    state = checkpoints.load(run)
    assert state["step"] == 200 and state["config"]["arch"] == "dcgan"
    assert state["opt_g"]["state"] and state["ema"] is not None


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = checkpoints.load(train(tiny_config(tmp_path / "a", steps=15)))
    b = checkpoints.load(train(tiny_config(tmp_path / "b", steps=15)))
    c = checkpoints.load(train(tiny_config(tmp_path / "c", steps=15, seed=1)))
    assert _weights_equal(a["generator"], b["generator"])
    assert _weights_equal(a["discriminator"], b["discriminator"])
    assert not _weights_equal(a["generator"], c["generator"])


def test_resume_to_a_new_total_reproduces_the_longer_run(tmp_path):
    # 40 steps straight vs 25 steps, then resumed to 40 (crossing an epoch boundary at 16 and 32).
    # Only under constant learning rates: the preset's linear decay depends on the total.
    straight = train(tiny_config(tmp_path / "straight", steps=40, conditional=True,
                                 lr_schedule="constant"))
    split = train(tiny_config(tmp_path / "split", steps=25, conditional=True,
                              lr_schedule="constant"))
    resume(split, steps=40)
    a, b = checkpoints.load(straight), checkpoints.load(split)
    assert b["step"] == 40
    for key in ("generator", "discriminator", "ema"):
        assert _weights_equal(a[key], b[key]), key
    assert _rows(straight) == [dict(r, seconds=s["seconds"])
                               for r, s in zip(_rows(split), _rows(straight))]


def test_an_interrupted_run_resumes_onto_the_uninterrupted_weights(tmp_path, monkeypatch):
    """The preset's learning rates decay over the run's second half: a run stopped in that half
    by SIGINT and resumed ends on the very weights of one that never stopped."""
    from training import loop
    straight = train(tiny_config(tmp_path / "straight", steps=40, conditional=True))
    assert json.loads((straight / "config.json").read_text())["lr_schedule"] == "linear"
    schedule = loop._schedule_lr

    def interrupt_at_step_25(models, cfg, step):
        if step == 25:
            os.kill(os.getpid(), signal.SIGINT)  # handled between steps, as a Ctrl-C is
        schedule(models, cfg, step)

    monkeypatch.setattr(loop, "_schedule_lr", interrupt_at_step_25)
    with pytest.raises(loop.TrainingInterrupted):
        train(tiny_config(tmp_path / "split", steps=40, conditional=True))
    monkeypatch.setattr(loop, "_schedule_lr", schedule)
    split = tmp_path / "split"
    assert checkpoints.load(split)["step"] == 26
    resume(split)
    a, b = checkpoints.load(straight), checkpoints.load(split)
    assert b["step"] == 40
    # constant for steps 0..19, then (40 - step) / 20 of it: the last step ran at 1/20
    assert a["opt_g"]["param_groups"][0]["lr"] == pytest.approx(4e-4 / 20)
    for key in ("generator", "discriminator", "ema"):
        assert _weights_equal(a[key], b[key]), key
    assert _rows(straight) == [dict(r, seconds=s["seconds"])
                               for r, s in zip(_rows(split), _rows(straight))]


def test_checkpoints_load_with_weights_only(tiny_run):
    # checkpoints.load uses weights_only=True; a plain torch.load with it must accept the file.
    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == checkpoints.FORMAT


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "training", "train", "--data-dir", str(SUBSET_DIR), "--no-download",
           "--steps", "100000", "--g-width", "8", "--d-width", "16", "--batch-size", "32",
           "--train-subset", "512", "--eval-every", "-1", "--no-progress", "--threads", "1",
           "--out", str(run), "--log-every", "1"]
    proc = subprocess.Popen(cmd, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (run / "metrics.csv").exists() and len(_rows(run)) >= 20:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "resume" in out
    state = checkpoints.load(run)
    assert 20 <= state["step"] < 100000
    stopped_at = state["step"]
    assert max(int(r["step"]) for r in _rows(run)) >= stopped_at
    resume(run, steps=stopped_at + 5, overrides={"progress": False})
    assert checkpoints.load(run)["step"] == stopped_at + 5
    assert [int(r["step"]) for r in _rows(run)] == list(range(1, stopped_at + 6))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("conditional", [False, True])
def test_every_arch_maps_latents_to_28x28_and_d_to_one_logit(arch, conditional):
    cfg = TrainConfig(arch=arch).resolved()
    classes = 10 if conditional else 0
    g = build_generator(arch, 100, classes, cfg.g_width)
    d = build_discriminator(arch, classes, cfg.d_width, cfg.d_dropout)
    labels = torch.arange(4) if conditional else None
    images = g(torch.randn(4, 100), labels)
    assert images.shape == (4, 1, 28, 28)
    lo, hi = ARCHS[arch].output_range
    assert lo <= images.min() and images.max() <= hi
    assert d(images, labels).shape == (4,)


@pytest.mark.parametrize("arch", ["tf-dcgan", "upsample-dcgan", "mlp"])
def test_presets_train_a_few_steps(arch, tmp_path):
    run = train(tiny_config(tmp_path / arch, arch=arch, g_width=None, d_width=None, steps=3,
                            batch_size=8, train_subset=64))
    assert checkpoints.load(run)["config"]["arch"] == arch
    assert all(np.isfinite(float(r["loss_g"])) for r in _rows(run))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_is_the_real_target_of_the_d_step(tmp_path, monkeypatch, smoothing):
    """One real training step, with the loss function watched: D's loss on real images is
    taken against 1 - smoothing, on fakes against 0, and G's against 1 (non-saturating)."""
    import torch.nn.functional as F
    targets = []
    real_bce = F.binary_cross_entropy_with_logits

    def watched(logits, target, *args, **kwargs):
        targets.append(target.detach().clone())
        return real_bce(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", watched)
    train(tiny_config(tmp_path / "run", label_smoothing=smoothing, steps=1, sample_at=[]))
    real, fake, generator = targets[:3]
    assert torch.allclose(real, torch.full_like(real, 1.0 - smoothing)) and real.numel() == 32
    assert torch.all(fake == 0) and torch.all(generator == 1)


def test_bad_hyper_parameters_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="--label-smoothing"):
        train(tiny_config(tmp_path / "x", label_smoothing=0.7))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        train(tiny_config(tmp_path / "y", batch_size=1024, train_subset=100))


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import torch.nn.functional as F
    from training import loop
    calls = {"n": 0}
    real_bce = F.binary_cross_entropy_with_logits

    def bce_turning_nan(logits, target):
        calls["n"] += 1
        loss = real_bce(logits, target)
        return loss * float("nan") if calls["n"] > 3 * 12 else loss  # 3 BCE calls per step

    monkeypatch.setattr(loop.F, "binary_cross_entropy_with_logits", bce_turning_nan)
    with pytest.raises(loop.NonFiniteLoss, match="step 13"):
        train(tiny_config(tmp_path / "run", steps=40, checkpoint_every=10))
    state = checkpoints.load(tmp_path / "run")
    assert state["step"] == 10
    assert all(torch.isfinite(p).all() for p in state["generator"].values()
               if p.dtype.is_floating_point)


def test_tensorboard_events_hold_the_losses_and_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = train(tiny_config(tmp_path / "run", steps=5, tensorboard=True, sample_at=[2]))
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"loss_d", "loss_g", "d_real"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss_g")] == [1, 2, 3, 4, 5]
    assert "samples" in events.Tags()["images"]


def test_the_best_checkpoint_is_chosen_without_the_test_split(tmp_path):
    # The card reports on the test split; the loop's evaluations pick best.pt against train
    # images instead. A data folder holding only the train split proves the test split is
    # never read: with it missing, training still evaluates and keeps its best checkpoint.
    import shutil
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "SUBSET.json"):
        shutil.copy(SUBSET_DIR / "mnist" / name, data / name)
    run = train(tiny_config(tmp_path / "run", data_dir=str(tmp_path / "data"), steps=20,
                            eval_every=10, eval_samples=200, conditional=True))
    rows = list(csv.DictReader((run / "eval.csv").open()))
    assert [r["step"] for r in rows] == ["10", "20"] and all(float(r["fd"]) > 0 for r in rows)
    assert (run / "checkpoints" / "best.pt").is_file()


# --- AC-GAN (issue #41): an opt-in flag, off by default ------------------------------------------

def test_the_auxiliary_class_loss_trains_a_class_head_on_d(tmp_path):
    with_aux = checkpoints.load(train(tiny_config(tmp_path / "aux", conditional=True, steps=5,
                                                  aux_class_weight=1.0)))
    plain = checkpoints.load(train(tiny_config(tmp_path / "plain", conditional=True, steps=5)))
    head = {k: v for k, v in with_aux["discriminator"].items() if k.startswith("classify.")}
    assert head and not any(k.startswith("classify.") for k in plain["discriminator"])
    # The class loss reaches G too: the same seed, other generator weights.
    assert not _weights_equal(with_aux["generator"], plain["generator"])


def test_the_auxiliary_class_loss_needs_a_conditional_model():
    with pytest.raises(ValueError, match="needs --conditional"):
        tiny_config("unused", aux_class_weight=1.0).resolved()


def test_the_twin_class_head_learns_from_fakes_and_pushes_back_on_g(tmp_path):
    # TAC-GAN: a second class head on D's features, trained on fakes; G's loss subtracts its
    # loss, so with the same seed G ends somewhere else than plain AC-GAN's.
    twin = checkpoints.load(train(tiny_config(tmp_path / "twin", conditional=True, steps=5,
                                              aux_class_weight=1.0, aux_twin=True)))
    acgan = checkpoints.load(train(tiny_config(tmp_path / "acgan", conditional=True, steps=5,
                                               aux_class_weight=1.0)))
    assert any(k.startswith("twin.") for k in twin["discriminator"])
    assert not any(k.startswith("twin.") for k in acgan["discriminator"])
    assert not _weights_equal(twin["generator"], acgan["generator"])


def test_g_works_against_the_twin_by_the_share_asked(tmp_path):
    # After the same first D step (the twin's share does not enter D's loss), G's loss is
    # AC-GAN's less share x the twin's cross-entropy: 0.5 lands halfway between 0 and 1.
    def first_losses(share: float) -> tuple[float, float]:
        run = train(tiny_config(tmp_path / str(share), conditional=True, steps=1,
                                aux_class_weight=1.0, aux_twin=True, aux_twin_weight=share))
        with open(run / "metrics.csv") as f:
            row = next(csv.DictReader(f))
        return float(row["loss_d"]), float(row["loss_g"])

    (d0, g0), (d_half, g_half), (d1, g1) = map(first_losses, (0.0, 0.5, 1.0))
    assert d0 == d_half == d1
    assert g0 - g1 > 0.5  # the twin's cross-entropy over 10 classes starts near ln 10
    assert g_half == pytest.approx((g0 + g1) / 2, abs=2e-5)


def test_the_twin_class_head_needs_the_auxiliary_class_loss():
    with pytest.raises(ValueError, match="--aux-twin needs --aux-class-weight"):
        tiny_config("unused", conditional=True, aux_twin=True).resolved()
    with pytest.raises(ValueError, match="--aux-twin-weight must be in"):
        tiny_config("unused", conditional=True, aux_class_weight=1.0, aux_twin=True,
                    aux_twin_weight=1.5).resolved()
    with pytest.raises(ValueError, match="--aux-twin-weight needs --aux-twin"):
        tiny_config("unused", conditional=True, aux_class_weight=1.0,
                    aux_twin_weight=0.8).resolved()
