"""HTTP side by side: this service's REST `infer` against KServe's and MLServer's REST endpoints.

    bash bench/peers/setup.sh .bench-venvs            # once: the peers' own venvs (pinned)
    python bench/compare_http.py --peers .bench-venvs --out docs/benchmarks/compare-http-cpu.md
    python bench/compare_http.py --baseline ../old-checkout --only dcgan-serve,baseline

The same ONNX file behind each; every target's first answer is checked against in-process
onnxruntime before anything is timed. The load is h2load --h1 (C, its own process): one
keep-alive HTTP/1.1 connection per client, one request in flight on each, the same request
body repeated; rounds interleaved, medians. Each server gets the request its users would send:

  dcgan-serve   seeds as JSON, images back in Triton's binary extension (binary_data_output)
  kserve        latents as binary tensors (the same extension), images back binary
  mlserver      latents as JSON (MLServer has no binary extension), images back as JSON
  in-process    C threads calling `session.run` on ready latents: the ceiling
  baseline      with `--baseline DIR`: dcgan-serve from another checkout, sent the same
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare_servers import _RUNNER, _in_process, _tree_rss_mb, baseline_spec, stop  # noqa: E402
from bench.image import free_port  # noqa: E402
from bench.serve_bench import command_line, machine  # noqa: E402

PEERS = ROOT / "bench" / "peers"
MODEL = "dcgan"
BINARY = "Inference-Header-Content-Length"


@dataclass
class Target:
    name: str
    command: list[str] = field(default_factory=list)  # "{port}" (gRPC), "{http}" replaced
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    http: int = 0
    start_s: float = math.nan
    idle_rss_mb: float = math.nan
    note: str = ""


def request_body(target: str, batch: int, latent_dim: int, conditional: bool
                 ) -> tuple[bytes, dict]:
    """(body, extra headers) of one infer request for `batch` images, as that server's users
    would send it."""
    from service.contract import seeds_to_latents
    labels = (np.arange(batch, dtype=np.int64) % 10) if conditional else None
    if target.startswith(("dcgan-serve", "baseline")):
        inputs = [{"name": "seeds", "datatype": "UINT64", "shape": [batch],
                   "data": list(range(batch))}]
        return json.dumps({"inputs": inputs,
                           "parameters": {"binary_data_output": True}}).encode(), {}
    latents = seeds_to_latents(range(batch), latent_dim)
    if target == "kserve":  # binary tensors after the JSON header
        inputs = [{"name": "latent", "datatype": "FP32", "shape": [batch, latent_dim],
                   "parameters": {"binary_data_size": latents.nbytes}}]
        blobs = [latents.tobytes()]
        if labels is not None:
            inputs.append({"name": "label", "datatype": "INT64", "shape": [batch],
                           "parameters": {"binary_data_size": labels.nbytes}})
            blobs.append(labels.tobytes())
        header = json.dumps({"inputs": inputs,
                             "parameters": {"binary_data_output": True}}).encode()
        return header + b"".join(blobs), {BINARY: str(len(header)),
                                          "Content-Type": "application/octet-stream"}
    inputs = [{"name": "latent", "datatype": "FP32", "shape": [batch, latent_dim],
               "data": latents.reshape(-1).tolist()}]
    if labels is not None:
        inputs.append({"name": "label", "datatype": "INT64", "shape": [batch],
                       "data": labels.tolist()})
    return json.dumps({"inputs": inputs}).encode(), {}


def images_from(body: bytes, headers) -> np.ndarray:
    """The first output of an infer response, binary or JSON."""
    split = int(headers.get(BINARY) or len(body))
    header = json.loads(body[:split])
    first = header["outputs"][0]
    if split < len(body):
        data = np.frombuffer(body[split:split + first["parameters"]["binary_data_size"]],
                             np.uint8)
    else:
        data = np.asarray(first["data"], np.uint8)
    return data.reshape(first["shape"])


def _url(target: Target) -> str:
    return f"http://127.0.0.1:{target.http}/v2/models/{MODEL}/infer"


def _post(target: Target, batch: int, latent_dim: int, conditional: bool):
    body, headers = request_body(target.name, batch, latent_dim, conditional)
    request = urllib.request.Request(_url(target), data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})

    with urllib.request.urlopen(request, timeout=30) as response:
        return images_from(response.read(), response.headers)


def start(target: Target, latent_dim: int, conditional: bool, log_dir: Path) -> None:
    target.http = free_port()
    command = [p.replace("{port}", str(free_port())).replace("{http}", str(target.http))
               for p in target.command]
    log = log_dir / f"{target.name.replace(' ', '_')}.log"
    started = time.monotonic()
    with log.open("w") as out:
        target.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **target.env},
                                       start_new_session=True)
    while True:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited; see {log}")
        try:
            images = _post(target, 4, latent_dim, conditional)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() - started > 180:
                raise RuntimeError(f"{target.name} gave no answer in 180 s; see {log}")
            time.sleep(0.05)
    target.start_s = time.monotonic() - started
    from service.contract import seeds_to_latents
    labels = np.arange(4, dtype=np.int64) % 10 if conditional else None
    expected = _RUNNER["runner"].run(seeds_to_latents(range(4), latent_dim), labels)
    if not np.array_equal(images.reshape(expected.shape), expected):
        raise RuntimeError(f"{target.name} answered different pixels")
    time.sleep(2)
    target.idle_rss_mb = _tree_rss_mb(target.proc.pid)


def drive(target: Target, batch: int, clients: int, seconds: float, latent_dim: int,
          conditional: bool) -> dict:
    if target.name == "in-process":
        return _in_process(batch, clients, seconds)
    body, headers = request_body(target.name, batch, latent_dim, conditional)
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log.tsv"
        data.write_bytes(body)
        args = ["h2load", "--h1", "-c", str(clients), "-t", "1",
                "-D", f"{int(seconds * 1000)}ms", "--warm-up-time", "300ms",
                "-d", str(data), f"--log-file={log}"]
        for key, value in {"Content-Type": "application/json", **headers}.items():
            args += ["-H", f"{key}: {value}"]
        out = subprocess.run(args + [_url(target)], capture_output=True, text=True,
                             timeout=seconds + 120).stdout
        rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else \
            np.empty((0, 3), np.int64)
    ok = rows[rows[:, 1] == 200]
    total = int(re.search(r"requests: (\d+) total", out).group(1))
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    elapsed = total / rate if rate else seconds
    if not len(ok):
        return {"calls": 0, "errors": len(rows), "seconds": elapsed, "p50_ms": math.nan,
                "p99_ms": math.nan}
    latencies = ok[:, 2] / 1e3  # µs -> ms
    return {"calls": len(ok), "errors": len(rows) - len(ok), "seconds": elapsed,
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def targets(model: str, peers: Path | None, workdir: Path,
            baselines: list[tuple[str, Path]] = ()) -> list[Target]:
    env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    serve = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "{port}",
             "--http-port", "{http}", "--metrics-port", "-1", "--device", "cpu",
             "--model", f"{MODEL}={model}"]
    found = [Target("in-process"), Target("dcgan-serve", serve, env),
             Target("dcgan-serve -p2", serve + ["--processes", "2"], env)]
    found += [Target(name, serve, {"PYTHONPATH": str(baseline.resolve()),
                                   "PYTHONUNBUFFERED": "1"}) for name, baseline in baselines]
    if peers is None:
        return found
    bin_ = lambda name: peers / name / "bin"  # noqa: E731
    if (bin_("kserve") / "python").exists():
        found.append(Target("kserve", [str(bin_("kserve") / "python"),
                                       str(PEERS / "kserve_server.py"), model, "{port}",
                                       "{http}"]))
    if (bin_("mlserver") / "mlserver").exists():
        found.append(Target("mlserver", [str(bin_("mlserver") / "python"),
                                         str(PEERS / "mlserver_runtime.py"), model, "{port}",
                                         str(workdir / "mlserver"), "{http}"]))
    return found


def main() -> int:
    from service.process.config import bundled_models
    from service.runtime import OnnxGenerator, RuntimeOptions
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(bundled_models()[0][1]))
    parser.add_argument("--peers", type=Path, help="folder of the peers' venvs (setup.sh)")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=baseline_spec, action="append", default=[],
                        metavar="[NAME=]DIR", help="another checkout of this project, run "
                        "beside this one (repeatable: 'baseline NAME')")
    parser.add_argument("--only", help="comma-separated target names to run (the "
                                       "in-process ceiling always runs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not shutil.which("h2load"):
        parser.error("needs nghttp2's h2load (apt-get install nghttp2-client)")
    runner = OnnxGenerator(args.model, RuntimeOptions(device="cpu", intra_op_threads=0))
    _RUNNER["runner"] = runner
    latent_dim, conditional = runner.metadata.latent_dim, runner.metadata.conditional
    workdir = Path(tempfile.mkdtemp(prefix="compare-http-"))
    chosen, live, rows = targets(args.model, args.peers, workdir, args.baseline), [], []
    if args.only:
        chosen = [t for t in chosen if t.name in ("in-process", *args.only.split(","))]
    try:
        for target in chosen:
            if target.command:
                try:
                    start(target, latent_dim, conditional, workdir)
                except RuntimeError as exc:
                    target.note = str(exc)
                    print(f"skipping {target.name}: {exc}", flush=True)
                    stop(target)
                    continue
                print(f"{target.name}: first answer after {target.start_s:.2f} s, idle RSS "
                      f"{target.idle_rss_mb:.0f} MB", flush=True)
            live.append(target)
        for batch in map(int, args.batches.split(",")):
            for clients in map(int, args.clients.split(",")):
                runs: dict[str, list[dict]] = {t.name: [] for t in live}
                for r in range(args.rounds):
                    for target in (live if r % 2 == 0 else live[::-1]):
                        runs[target.name].append(drive(target, batch, clients, args.seconds,
                                                       latent_dim, conditional))
                ceiling = float(np.median([x["calls"] * batch / x["seconds"]
                                           for x in runs["in-process"]]))
                for target in live:
                    got = runs[target.name]
                    row = {"batch": batch, "clients": clients, "target": target.name,
                           "img_s": float(np.median([x["calls"] * batch / x["seconds"]
                                                     for x in got])),
                           "p50_ms": float(np.median([x["p50_ms"] for x in got])),
                           "p99_ms": float(np.median([x["p99_ms"] for x in got])),
                           "errors": sum(x.get("errors", 0) for x in got)}
                    row["vs_ceiling"] = row["img_s"] / ceiling
                    rows.append(row)
                    print(f"batch {batch:3d} clients {clients} {target.name:16s} "
                          f"{row['img_s']:8.0f} img/s p50 {row['p50_ms']:7.2f} ms p99 "
                          f"{row['p99_ms']:7.2f} ms {row['vs_ceiling']:.2f} of ceiling",
                          flush=True)
    finally:
        for target in live:
            stop(target)
    if args.out:
        write_report(args, chosen, rows)
    return 0


def write_report(args, chosen: list[Target], rows: list[dict]) -> None:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; model "
             f"`{Path(args.model).name}`; {args.rounds} interleaved rounds of {args.seconds:g} s "
             "per cell (medians); load: h2load --h1, one connection per client.",
             f"Command: `{command_line()}`", "",
             "| target | start-up to first answer s | idle RSS MB | note |",
             "|---|---:|---:|---|"]
    lines += [f"| {t.name} | {t.start_s:.2f} | {t.idle_rss_mb:.0f} | {t.note} |"
              for t in chosen]
    lines += ["", "| batch | clients | target | img/s | p50 ms | p99 ms | of ceiling |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['clients']} | {r['target']} | {r['img_s']:.0f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['vs_ceiling']:.2f} |"
                     + (f" {r['errors']} failed" if r["errors"] else ""))
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
