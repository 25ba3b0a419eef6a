"""Two exported generators side by side: is the new one's graph the old one's, and does it
serve as fast? For a retrained model whose serving cost must not change.

    git show HEAD~1:models/mnist-dcgan.onnx > /tmp/old.onnx
    python bench/model_ab.py /tmp/old.onnx models/mnist-dcgan.onnx

Compares the node operators in order and every initializer's shape, then times each model
with graph_bench's session and loop (all graph optimisations, one intra-op thread) at each
batch size, alternating the two over --rounds so load on a shared machine hits both alike;
prints the median images/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.graph_bench import session, throughput  # noqa: E402


def structure(path: str) -> tuple[list[str], dict[str, tuple]]:
    graph = onnx.load(path).graph
    return ([n.op_type for n in graph.node],
            {i.name: tuple(i.dims) for i in graph.initializer})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    (old_ops, old_shapes), (new_ops, new_shapes) = structure(args.old), structure(args.new)
    same_ops = old_ops == new_ops
    same_shapes = sorted(old_shapes.values()) == sorted(new_shapes.values())
    print(f"operators: {len(old_ops)} and {len(new_ops)}, same sequence: {same_ops}")
    print(f"initializers: {len(old_shapes)} and {len(new_shapes)}, same shapes: {same_shapes}")

    sessions = {"old": session(args.old, "all", threads=1)[0],
                "new": session(args.new, "all", threads=1)[0]}
    for batch in (int(b) for b in args.batches.split(",")):
        rates = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                rates[name].append(throughput(s, batch, args.seconds))
        old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
        print(f"batch {batch}: old {old:,.0f} img/s, new {new:,.0f} img/s, new/old {new / old:.3f}")
    return 0 if same_ops and same_shapes else 1


if __name__ == "__main__":
    sys.exit(main())
