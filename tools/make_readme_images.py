"""Make the pictures in README.md and models/README.md from the bundled models.

    python tools/make_readme_images.py

Conditional models: a 10x10 grid, row k = seeds 0..9 with label k. Unconditional: seeds 0..99.
The images come from `service.runtime.OnnxGenerator`, the server's own runner, so they are the
pixels `Generate` returns for those seeds and labels.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.process.config import bundled_models  # noqa: E402
from service.contract import seeds_to_latents  # noqa: E402
from service.imaging import make_grid  # noqa: E402
from service.runtime import OnnxGenerator  # noqa: E402


def main() -> None:
    out_dir = ROOT / "docs" / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in bundled_models():
        runner = OnnxGenerator(path)
        meta = runner.metadata
        if meta.conditional:
            seeds = np.tile(np.arange(10), meta.num_classes)
            labels = np.repeat(np.arange(meta.num_classes), 10)
            out = out_dir / f"{name}-classes.png"
        else:
            seeds, labels, out = np.arange(100), None, out_dir / f"{name}-seeds.png"
        images = runner.run(seeds_to_latents(seeds.tolist(), meta.latent_dim), labels)
        grid = Image.fromarray(make_grid(images, ncols=10), mode="L")
        grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
