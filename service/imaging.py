"""Turning uint8 image batches into PNG bytes and grids (numpy + pillow, no torch).

The service's PNG output formats and the training CLI's sample grids both come from here, so a
grid from `dcgan-train sample --grid` and a GRID response are the same picture.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, ncols: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images [N, 1, H, W] into one [rows*(H+p)+p, cols*(W+p)+p] uint8 image."""
    n, _, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding), np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = images[i, 0]
    return grid


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of one uint8 grey image [H, W]; level 1 is fast and still lossless."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_gif(images: np.ndarray, frame_ms: int = 80) -> bytes:
    """A looping animated GIF of uint8 images [N, 1, H, W]; grey levels are kept exactly."""
    frames = [Image.fromarray(img[0], mode="L") for img in images]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=frame_ms, loop=0)
    return buf.getvalue()


def save_walk(images: np.ndarray, out_dir: Path, frame_ms: int = 80) -> list[Path]:
    """An interpolation's uint8 frames [N, 1, H, W] as files: frame_<i>.png each, strip.png
    (one row) and interpolation.gif (looping); returns the paths in that order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, frame in enumerate(images):
        path = out_dir / f"frame_{i:03d}.png"
        path.write_bytes(encode_png(frame[0]))
        written.append(path)
    strip, gif = out_dir / "strip.png", out_dir / "interpolation.gif"
    strip.write_bytes(encode_png(make_grid(images, ncols=len(images))))
    gif.write_bytes(encode_gif(images, frame_ms))
    return [*written, strip, gif]


def decode_png(data: bytes) -> np.ndarray:
    """uint8 [H, W] from PNG bytes (used by the client and the tests)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
