"""Turning uint8 image batches into PNG bytes and grids (numpy + pillow, no torch).

The service's PNG output formats and the training CLI's sample grids both come from here, so a
grid from `dcgan-train sample --grid` and a GRID response are the same picture.
"""

from __future__ import annotations

import io
import math

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


def decode_png(data: bytes) -> np.ndarray:
    """uint8 [H, W] from PNG bytes (used by the client and the tests)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
