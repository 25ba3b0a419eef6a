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
    """A looping animated GIF of uint8 images [N, 1, H, W], one frame each, grey levels kept
    exactly. Pillow's animated writer merges identical neighbouring frames (a walk between
    equal latents would lose frames), so each frame is encoded alone, on the same 256-grey
    palette, and their image blocks are joined behind one header."""
    header, frames = b"", []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[0], mode="L").save(buffer, format="GIF", optimize=False)
        data = buffer.getvalue()
        start = 13 + 3 * 256  # GIF header, logical screen, the 256-grey colour table
        if header and data[6:start] != header[6:start]:
            raise ValueError("GIF frames with different palettes")
        header = header or b"GIF89a" + data[6:start]
        while data[start] == 0x21:  # skip extensions: label, then sub-blocks to a 0 length
            start += 2
            while data[start]:
                start += data[start] + 1
            start += 1
        frames.append(data[start:data.rindex(b";")])  # image descriptor and its data
    delay = max(1, round(frame_ms / 10)).to_bytes(2, "little")  # in hundredths of a second
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # repeat for ever
    control = b"!\xf9\x04\x00" + delay + b"\x00\x00"
    return header + loop + b"".join(control + frame for frame in frames) + b";"


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
