"""Generate the Python gRPC stubs for proto/ into service/api/ (committed; a test diffs them).

    python tools/gen_protos.py            # regenerate in place
    python tools/gen_protos.py --check    # exit 1 if the committed stubs are stale

protoc writes `from dcgan.v1 import generator_pb2` (and `from inference import ...`), which only works with the output folder on
sys.path; the import is rewritten to the package path so nothing needs sys.path tricks.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "service" / "api"
PROTOS = ["dcgan/v1/generator.proto", "inference/grpc_predict_v2.proto"]
INIT = '"""Generated gRPC stubs for proto/ (tools/gen_protos.py); do not edit."""\n'


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"  # well-known types shipped with grpc_tools
    for proto in PROTOS:
        code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                            f"--pyi_out={out}", f"--grpc_python_out={out}", proto])
        if code != 0:
            raise SystemExit(f"protoc failed on {proto}")
    for path in out.rglob("*.py*"):
        text = path.read_text()
        for package in ("dcgan.v1", "inference"):
            text = text.replace(f"from {package} import", f"from service.api.{package} import")
        path.write_text(text)
    for folder in {p.parent for p in out.rglob("*_pb2.py")} | {out, out / "dcgan"}:
        (folder / "__init__.py").write_text(INIT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        print(f"generated stubs in {OUT}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [str(p.relative_to(tmp)) for p in Path(tmp).rglob("*") if p.is_file()
                 and (not (OUT / p.relative_to(tmp)).exists()
                      or (OUT / p.relative_to(tmp)).read_text() != p.read_text())]
    if stale:
        print("stale generated stubs (run python tools/gen_protos.py):", ", ".join(stale))
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
