"""Regression guard for the bundled models: each loads in the service, passes the exporter's
metadata checks, and a small-N `evaluate` stays within a stated margin of the figures recorded
beside it in models/default_models.json (computed the same way: seeds 0..999 against the
committed 1,000-image test subset, so they run on a fresh clone too)."""

from __future__ import annotations

import dataclasses
import json
import shlex

import onnx
import pytest

from service.process.config import bundled_models
from service.contract import MetadataKey, ModelMetadata
from service.runtime import OnnxGenerator
from service.settings import from_args
from tests.conftest import ROOT, SUBSET_DIR
from training.cli import build_parser
from training.config import TrainConfig
from training.evaluation import evaluate

ENTRIES = json.loads((ROOT / "models" / "default_models.json").read_text())["models"]
#: FD may move by this fraction (onnxruntime or numpy numerics); anything more is a regression.
FD_MARGIN = 0.10


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_bundled_model_loads_and_carries_complete_metadata(entry):
    path = ROOT / "models" / entry["file"]
    runner = OnnxGenerator(path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(MetadataKey.REQUIRED) <= set(props)
    meta = ModelMetadata.from_props(props)
    assert meta.dataset == entry["dataset"] and meta.trained_steps > 0
    assert runner.metadata == meta
    assert (entry["name"], path) in bundled_models()


def test_the_model_card_states_the_guarded_figures():
    """The card and the guard cannot drift apart: the card's table of guarded figures is
    exactly what default_models.json holds."""
    card = (ROOT / "models" / "README.md").read_text()
    table = card[card.index("| guarded (N = 1,000, subset)"):].split("\n\n")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}
    names = [c.strip() for c in table.splitlines()[0].split("|")[2:-1]]
    assert names == [e["name"] for e in ENTRIES]
    for column, entry in enumerate(ENTRIES):
        guard = entry["guard"]
        assert guard["samples"] == 1000
        assert rows["Fréchet distance (±10%)"][column] == f"{guard['fd']:.2f}"
        assert rows["recognised as the requested class (at least, −1 point)"][column] == \
            f"{guard['label_accuracy']:.1%}"
        assert rows["smallest class share (at least, −1 point)"][column] == \
            f"{guard['min_class_share']:.1%}"
    assert f"±{FD_MARGIN:.0%}" in table


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_small_evaluate_stays_within_the_recorded_figures(entry):
    guard = entry["guard"]
    scores = evaluate(str(ROOT / "models" / entry["file"]), n=guard["samples"],
                      data_dir=SUBSET_DIR, dataset=entry["dataset"])
    assert scores["fd"] == pytest.approx(guard["fd"], rel=FD_MARGIN)
    assert scores["min_class_share"] >= guard["min_class_share"] - 0.01
    assert not scores["mode_collapse"]
    if "label_accuracy" in guard:
        assert scores["label_accuracy"] >= guard["label_accuracy"] - 0.01


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_each_card_states_the_hyper_parameters_its_file_was_trained_with(entry):
    import re
    card = (ROOT / "models" / "README.md").read_text()
    section = card[card.index(f"## `{entry['name']}`"):]
    section = section[:section.find("\n## ", 1)]
    [row] = [line for line in section.splitlines() if line.startswith("| hyper-parameters |")]
    props = {p.key: p.value for p in onnx.load(str(ROOT / "models" / entry["file"])).metadata_props}
    trained = json.loads(props["dcgan.train_config"])
    assert float(re.search(r"Adam ([\d.e-]+)", row)[1]) == trained["lr_g"] == trained["lr_d"]
    for text in (f"β1 {trained['beta1']}", f"β2 {trained['beta2']}",
                 f"batch {trained['batch_size']}", f"EMA decay {trained['ema_decay']}",
                 f"latent {trained['latent_dim']}", f"seed {trained['seed']}",
                 f"`{trained['arch']}` preset", f"D width {trained['d_width']}",
                 f"G width {trained['g_width']}", f"schedule {trained['lr_schedule']}"):
        assert text in row, text
    # Issue #41's class heads: named on the card exactly when the file was trained with them.
    weight = trained.get("aux_class_weight", 0.0)
    assert (f"--aux-class-weight {weight:g}" in row) == bool(weight)
    assert ("--aux-twin" in row) == bool(trained.get("aux_twin"))
    share = trained.get("aux_twin_weight", 1.0)
    assert (f"--aux-twin-weight {share:g}" in row) == (share != 1.0)


def test_the_readmes_training_command_trains_the_default_models_recipe():
    """The README's "Train your own" command, parsed by dcgan-train's own parser and resolved
    against its preset, is the recipe the default model's file records: every setting of what
    to train, for how long and how to optimise (the ones before "where and how")."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Train your own"):].split("\n## ")[0]
    [line] = [line for line in section.splitlines() if "dcgan-train train " in line]
    cfg = from_args(TrainConfig, build_parser().parse_args(shlex.split(line)[1:])).resolved()
    default_model = onnx.load(str(ROOT / "models" / ENTRIES[0]["file"]))
    props = {p.key: p.value for p in default_model.metadata_props}
    trained = json.loads(props["dcgan.train_config"])
    fields = dataclasses.fields(TrainConfig)
    recipe = fields[:[f.name for f in fields].index("data_dir")]
    for field in recipe:
        if field.name not in ("steps", "epochs"):
            assert getattr(cfg, field.name) == trained.get(field.name, field.default), field.name
    # The file records steps; a command may say epochs of the 60,000-image train split.
    steps = cfg.steps or int(cfg.epochs * (60_000 // cfg.batch_size))
    assert steps == trained["steps"]
