"""Regression guard for the bundled models: each loads in the service, passes the exporter's
metadata checks, and a small-N `evaluate` stays within a stated margin of the figures recorded
beside it in models/default_models.json (computed the same way: seeds 0..999 against the
committed 1,000-image test subset, so they run on a fresh clone too)."""

from __future__ import annotations

import json

import onnx
import pytest

from service.config import bundled_models
from service.contract import MetadataKey, ModelMetadata
from service.runtime import OnnxGenerator
from tests.conftest import ROOT, SUBSET_DIR
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
