"""Serving dependency footprint: install the serving set (`pip install .`, what the image's
build stage runs) into a fresh venv and report the installed size per distribution.

    python bench/footprint.py --out docs/benchmarks/footprint.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sizes(site: Path) -> dict[str, int]:
    """Bytes per top-level entry of site-packages, grouped by distribution name."""
    out: dict[str, int] = {}
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower()
        if entry.name.endswith(".dist-info"):
            name = entry.name.rsplit("-", 1)[0].lower()
        total = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) \
            if entry.is_dir() else entry.stat().st_size
        out[name] = out.get(name, 0) + total
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        py = Path(tmp) / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(ROOT)], check=True)
        subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools"],
                       check=False)
        site = next(Path(tmp).glob("lib/python*/site-packages"))
        by_name = sorted(sizes(site).items(), key=lambda kv: -kv[1])
        total = sum(v for _, v in by_name)
        torch_present = any(name.startswith("torch") for name, _ in by_name)
    lines = ["| package (site-packages entry) | MB |", "|---|---:|"]
    lines += [f"| {name} | {size / 2**20:.1f} |" for name, size in by_name if size > 2**19]
    lines.append(f"| **total** | **{total / 2**20:.1f}** |")
    table = "\n".join(lines)
    print(table)
    print(f"torch installed: {torch_present}")
    if args.out:
        Path(args.out).write_text(
            f"Serving install footprint, measured {time.strftime('%Y-%m-%d')} (Python "
            f"{sys.version.split()[0]}, Linux x86-64): `pip install .` into a fresh venv, pip and "
            f"setuptools removed as in the image. torch installed: {torch_present}.\n"
            f"Command: `python bench/footprint.py --out {args.out}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
