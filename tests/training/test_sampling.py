"""`dcgan-train sample`: determinism, labels, and agreement between checkpoint and ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging import decode_png
from training.sampling import load_generator_source, sample


def test_same_seeds_same_bytes(tiny_onnx, tmp_path):
    a = sample(tiny_onnx, [7, 8, 9], tmp_path / "a", grid=True)
    b = sample(tiny_onnx, [7, 8, 9], tmp_path / "b", grid=True)
    assert [p.name for p in a] == ["seed_7.png", "seed_8.png", "seed_9.png", "grid.png"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert not np.array_equal(decode_png(a[0].read_bytes()), decode_png(a[1].read_bytes()))


def test_checkpoint_and_onnx_agree_within_one_grey_level(tiny_cond_run, tiny_cond_onnx):
    seeds = list(range(32))
    from_ckpt, labels_a = load_generator_source(tiny_cond_run).generate(seeds)
    from_onnx, labels_b = load_generator_source(tiny_cond_onnx).generate(seeds)
    assert np.array_equal(labels_a, labels_b)
    assert np.abs(from_ckpt.astype(int) - from_onnx.astype(int)).max() <= 1


def test_labels_by_number_or_name_one_or_per_seed(tiny_cond_onnx, tmp_path):
    written = sample(tiny_cond_onnx, [1, 2], tmp_path, labels=["7"])
    assert [p.name for p in written] == ["seed_1_label7.png", "seed_2_label7.png"]
    written = sample(tiny_cond_onnx, [1, 2], tmp_path, labels=["3", "4"])
    assert [p.name for p in written] == ["seed_1_label3.png", "seed_2_label4.png"]
    with pytest.raises(ValueError, match="2 labels for 3 seeds"):
        sample(tiny_cond_onnx, [1, 2, 3], tmp_path, labels=["3", "4"])
    with pytest.raises(ValueError, match=r"labels \[12\] out of range: .* classes 0..9"):
        sample(tiny_cond_onnx, [1], tmp_path, labels=["12"])
    with pytest.raises(ValueError, match="not a class of mnist"):
        sample(tiny_cond_onnx, [1], tmp_path, labels=["seven"])


def test_labels_for_an_unconditional_model_are_refused(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="not class-conditional"):
        sample(tiny_onnx, [1], tmp_path, labels=["3"])
