"""`dcgan-train sample`: determinism, labels, and agreement between checkpoint and ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging import decode_png
from training.sampling import interpolation, load_generator_source, sample


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


def test_interpolation_frames_end_on_the_two_seeds_images_and_make_a_gif(tiny_cond_onnx,
                                                                           tmp_path):
    from PIL import Image
    written = interpolation(tiny_cond_onnx, 3, 13, 6, tmp_path / "walk")
    assert [p.name for p in written][-2:] == ["strip.png", "interpolation.gif"]
    frames = [decode_png(p.read_bytes()) for p in written[:6]]
    # Frame 0 and the last frame are byte-identical to the plain samples of seeds 3 and 13.
    ends = sample(tiny_cond_onnx, [3, 13], tmp_path / "ends")
    assert written[0].read_bytes() == ends[0].read_bytes()
    assert written[5].read_bytes() == ends[1].read_bytes()
    assert not np.array_equal(frames[2], frames[0])  # the middle is neither end
    gif = Image.open(written[-1])
    assert gif.n_frames == 6 and gif.info["loop"] == 0
    for i, frame in enumerate(frames):  # a grey GIF keeps the pixels exactly
        gif.seek(i)
        assert np.array_equal(np.asarray(gif.convert("L")), frame)


def test_interpolation_between_two_classes_is_refused_unless_one_is_chosen(tiny_cond_onnx,
                                                                          tiny_onnx, tmp_path):
    from service.contract import ContractError
    with pytest.raises(ContractError, match="takes one class, not a mix of two: pass --label"):
        interpolation(tiny_cond_onnx, 3, 14, 4, tmp_path)
    assert len(interpolation(tiny_cond_onnx, 3, 14, 4, tmp_path, label="7")) == 6
    with pytest.raises(ContractError, match="not class-conditional"):
        interpolation(tiny_onnx, 3, 14, 4, tmp_path, label="7")


def test_psi_one_is_today_and_smaller_psi_changes_the_images(tiny_onnx, tmp_path):
    plain = sample(tiny_onnx, [5, 6], tmp_path / "plain")
    same = sample(tiny_onnx, [5, 6], tmp_path / "same", psi=1.0)
    assert [p.read_bytes() for p in plain] == [p.read_bytes() for p in same]
    truncated = sample(tiny_onnx, [5, 6], tmp_path / "psi", psi=0.5)
    assert [p.name for p in truncated] == ["seed_5_psi0.5.png", "seed_6_psi0.5.png"]
    assert truncated[0].read_bytes() != plain[0].read_bytes()
