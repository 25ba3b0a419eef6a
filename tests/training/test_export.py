"""ONNX export: graph signature, metadata, dynamic batch, parity, and refusing a bad export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.contract import MetadataKey, ModelMetadata, seeds_to_latents
from training import export as export_module
from training.export import ExportError, export


def test_unconditional_graph_signature_and_metadata(tiny_onnx, tiny_run):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    [z] = session.get_inputs()
    [images] = session.get_outputs()
    assert (z.name, z.type, z.shape[1]) == ("z", "tensor(float)", 100)
    assert isinstance(z.shape[0], str)  # a symbolic, dynamic batch axis
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)",
                                                             [1, 28, 28])
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props)
    assert (meta.arch, meta.dataset, meta.latent_dim, meta.num_classes) == ("dcgan", "mnist",
                                                                           100, 0)
    assert meta.version.endswith("@30") and meta.trained_steps == 30
    assert json.loads(props["dcgan.train_config"])["g_width"] == 8
    assert props["dcgan.weights"] == "ema"


def test_conditional_graph_takes_labels_and_names_its_classes(tiny_cond_onnx):
    session = ort.InferenceSession(str(tiny_cond_onnx), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("z", "tensor(float)"),
                                                                ("label", "tensor(int64)")]
    props = session.get_modelmeta().custom_metadata_map
    assert props[MetadataKey.NUM_CLASSES] == "10"
    assert props[MetadataKey.CLASS_NAMES].split(",") == [str(d) for d in range(10)]


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dynamic_batch(tiny_onnx, batch):
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    out = session.run(None, {"z": seeds_to_latents(range(batch), 100)})[0]
    assert out.shape == (batch, 1, 28, 28) and out.dtype == np.uint8


def test_export_report_states_parity_within_tolerance(tiny_cond_run, tmp_path):
    report = export(tiny_cond_run, tmp_path / "m.onnx")
    assert report["onnx_checker"] == "passed"
    assert 0 <= report["parity_max_excess_grey_levels"] <= export_module.PARITY_TOLERANCE
    assert report["parity_identical_pixel_share"] > 0.99
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size


def test_a_failed_parity_check_fails_loudly_and_writes_nothing(tiny_run, tmp_path, monkeypatch):
    # A negative tolerance cannot be met: the check must fail and leave no file behind.
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="parity check failed"):
        export(tiny_run, tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())
