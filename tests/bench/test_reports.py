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


def test_the_model_cards_fp16_note_states_what_the_graph_report_measured():
    report = (ROOT / "docs" / "benchmarks" / "graph-cpu.md").read_text()
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip("|").split("|")]
        for line in report.splitlines() if line.startswith("| ") and "img/s" not in line)}
    fp32 = [float(v) for v in rows["all"][2:]]
    fp16 = [float(v) for v in rows["fp16"][2:]]
    ratios = [h / f for h, f in zip(fp16, fp32)]
    equal = re.match(r"([\d.]+%)", rows["fp16"][1])[1]
    card = (ROOT / "models" / "README.md").read_text()
    note = " ".join(card[card.index("## Size and precision"):].split())
    assert f"{min(ratios):.2f}–{max(ratios):.2f}× the fp32 model" in note, ratios
    assert f"{equal} of its pixels equal fp32's" in note
