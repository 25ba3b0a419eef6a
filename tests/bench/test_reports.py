"""A benchmark report says exactly how it was made: its "Command:" line is the command as run."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_report_records_every_flag_it_was_run_with(tmp_path):
    out = tmp_path / "graph.md"
    flags = ["--batches", "2", "--seconds", "0.05", "--rounds", "1", "--out", str(out)]
    subprocess.run([sys.executable, "bench/graph_bench.py", *flags], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)

    report = out.read_text()
    command = re.search(r"^Command: `(.+)`$", report, re.M)[1]
    assert command == " ".join(["python", "bench/graph_bench.py", *flags])
    # ...and the figures below it are the ones those flags asked for.
    assert "1 interleaved rounds of 0.05 s" in report
    assert "| batch 2 img/s |" in report
