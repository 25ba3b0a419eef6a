"""Side-by-side serving benchmark: this service against the servers a user would pick instead.

    bash bench/peers/setup.sh .bench-venvs            # once: the peers' own venvs (pinned)
    python bench/compare_servers.py --peers .bench-venvs --load h2load --out docs/benchmarks/compare-h2load-cpu.md

In one session, on the same ONNX file, every target is started, timed to its first answer and
measured at idle (RSS of its whole process tree), then driven cell by cell (batch size x
concurrent clients) in interleaved rounds, so the machine's noise hits all alike:

  in-process      C threads calling onnxruntime `session.run` on ready latents (the ceiling)
  dcgan-serve     this service, defaults (dynamic batching on), `Generate` with seeds
  dcgan-serve -p2 the same with `--processes 2` (two workers on one port)
  dcgan-serve +http  the same as dcgan-serve with its HTTP port open (the others have it off)
  dcgan-serve +trace the same with OpenTelemetry tracing on, every call sampled and exported
                  over OTLP/gRPC to bench/otlp_sink.py (started with it, in its process tree);
                  "+trace 10%": one call in ten sampled (parentbased_traceidratio 0.1)
  baseline, baseline -p2   with `--baseline DIR`: the same two from another checkout (an
                  earlier commit, e.g. `git worktree add DIR COMMIT`), to compare code changes;
                  repeatable as `--baseline NAME=DIR` ("baseline NAME")
  handwritten     grpcio + onnxruntime by hand, V2 ModelInfer with latents (thread-pool
                  server; "handwritten aio": the same with grpc.aio)
  kserve, mlserver, pytriton   the peers (skipped when their venv is absent), V2 with latents

Two load generators (`--load`):
  python  client processes, one gRPC connection per client thread (so connections can spread
          over a multi-process server); shares the 2 cores' GIL-bound Python work with the
          server, so it caps what any Python server can show at batch 1.
  h2load  nghttp2's HTTP/2 load tool (Debian `nghttp2-client`), written in C: C connections,
          one call in flight on each, the same pre-serialised gRPC request repeated; latencies
          from its per-request log. A gRPC error still answers HTTP 200, so every cell checks
          that the responses carried the images' bytes (an error carries none).
The peers receive latents (what their users would send); this service receives seeds and makes
the latents itself: the same images either way.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.image import free_port  # noqa: E402
from bench.serve_bench import closed_loop, command_line, machine  # noqa: E402

PEERS = ROOT / "bench" / "peers"
MODEL_NAME = "dcgan"


@dataclass
class Target:
    name: str
    kind: str                      # "inproc", "generate" (seeds) or "v2" (latents)
    command: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    cwd: Path | None = None          # `python -m service` imports from here first
    proc: subprocess.Popen | None = None
    port: int = 0
    start_s: float = math.nan
    idle_rss_mb: float = math.nan
    note: str = ""


# --- clients ------------------------------------------------------------------------------------

def _v2_request(batch: int, latent_dim: int, conditional: bool):
    from service.api.inference import grpc_predict_v2_pb2 as v2
    from service.contract import seeds_to_latents
    latents = seeds_to_latents(range(batch), latent_dim)
    request = v2.ModelInferRequest(model_name=MODEL_NAME)
    request.inputs.add(name="latent", datatype="FP32", shape=[batch, latent_dim])
    request.raw_input_contents.append(latents.tobytes())
    if conditional:
        request.inputs.add(name="label", datatype="INT64", shape=[batch, 1])
        request.raw_input_contents.append((np.arange(batch, dtype=np.int64) % 10).tobytes())
    return request


def _caller(kind: str, port: int, batch: int, latent_dim: int, conditional: bool):
    """One client thread's call: its own connection (a local subchannel pool)."""
    import grpc
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)])
    if kind == "generate":
        from service.api.dcgan.v1 import generator_pb2 as pb
        from service.api.dcgan.v1 import generator_pb2_grpc as pb_grpc
        stub, request = pb_grpc.GeneratorServiceStub(channel), pb.GenerateRequest(
            seeds=list(range(batch)))
        return lambda: stub.Generate(request, timeout=60)
    from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    request = _v2_request(batch, latent_dim, conditional)
    return lambda: stub.ModelInfer(request, timeout=60)


def _client_process(kind, port, batch, threads, seconds, latent_dim, conditional, queue):
    calls = [_caller(kind, port, batch, latent_dim, conditional) for _ in range(threads)]
    for call in calls:
        call()  # connect and warm
    import threading
    lock = threading.Lock()
    per_thread: dict[int, object] = {}

    def call():
        # closed_loop runs this in each of its threads: each thread keeps one connection.
        ident = threading.get_ident()
        if ident not in per_thread:
            with lock:
                per_thread[ident] = calls[len(per_thread)]
        return per_thread[ident]()

    queue.put(closed_loop(call, threads, seconds, keep_latencies=True))


_GRPC_PATH = {"generate": "/dcgan.v1.GeneratorService/Generate",
              "v2": "/inference.GRPCInferenceService/ModelInfer"}


def _grpc_frame(kind: str, batch: int, latent_dim: int, conditional: bool) -> bytes:
    """One request as gRPC puts it on the wire: uncompressed flag, 4-byte length, message."""
    if kind == "generate":
        from service.api.dcgan.v1 import generator_pb2 as pb
        message = pb.GenerateRequest(seeds=list(range(batch))).SerializeToString()
    else:
        message = _v2_request(batch, latent_dim, conditional).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def drive_h2load(target: Target, batch: int, concurrency: int, seconds: float, latent_dim: int,
                 conditional: bool) -> dict:
    # Long enough for each client to finish a call or two even in the biggest cells (32
    # clients x 256 images is 8,192 images per round: ~3 s for the slowest target here).
    seconds = max(seconds, batch * concurrency / 1500)
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "request", Path(tmp) / "log.tsv"
        body.write_bytes(_grpc_frame(target.kind, batch, latent_dim, conditional))
        out = subprocess.run(
            ["h2load", "--clients", str(concurrency), "--max-concurrent-streams", "1",
             "--threads", "1", "--duration", f"{int(seconds * 1000)}ms",
             "--warm-up-time", "300ms",
             "--header", "content-type: application/grpc", "--header", "te: trailers",
             "--data", str(body), f"--log-file={log}",
             f"http://127.0.0.1:{target.port}{_GRPC_PATH[target.kind]}"],
            capture_output=True, text=True, timeout=seconds + 120).stdout
        rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else \
            np.empty((0, 3), np.int64)
    done = int(re.search(r"(\d+) succeeded", out).group(1))
    data = int(re.search(r"traffic: .*?\((\d+)\) data", out).group(1))
    # h2load counts only the calls of the measured --duration, and so does its req/s; its
    # "finished in" also spans the warm-up, so it is not the time to divide those calls by.
    total = int(re.search(r"requests: (\d+) total", out).group(1))
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    elapsed = total / rate if rate else seconds
    # Calls that carried their images; the rest were gRPC errors (e.g. RESOURCE_EXHAUSTED
    # from a server's backpressure), reported beside the throughput rather than counted in it.
    image_bytes = int(np.prod(_RUNNER["runner"].image_shape))
    answered = min(done, data // (batch * image_bytes))
    if not answered:  # reported as a row of zero images, not a reason to lose the whole run
        return {"calls": 0, "errors": done, "seconds": elapsed, "p50_ms": math.nan,
                "p99_ms": math.nan}
    latencies = rows[rows[:, 1] == 200, 2] / 1e6
    return {"calls": answered, "errors": done - answered, "seconds": elapsed,
            "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
            "p99_ms": float(np.percentile(latencies, 99)) * 1e3}


def drive(target: Target, batch: int, concurrency: int, seconds: float, latent_dim: int,
          conditional: bool, load: str = "python") -> dict:
    if target.kind == "inproc":
        return _in_process(batch, concurrency, seconds)
    if load == "h2load":
        return drive_h2load(target, batch, concurrency, seconds, latent_dim, conditional)
    processes = 1 if concurrency <= 8 else 2  # one Python client process tops out near 8
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    procs = [ctx.Process(target=_client_process, args=(
        target.kind, target.port, batch, share, seconds, latent_dim, conditional, queue))
        for share in shares]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 180) for _ in procs]
    for p in procs:
        p.join()
    latencies = np.concatenate([r["latencies"] for r in results])
    return {"calls": sum(r["calls"] for r in results),
            "seconds": max(r["seconds"] for r in results),
            "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
            "p99_ms": float(np.percentile(latencies, 99)) * 1e3}


_RUNNER = {}


def _in_process(batch, concurrency, seconds) -> dict:
    runner = _RUNNER["runner"]
    from service.contract import seeds_to_latents
    latents = seeds_to_latents(range(batch), runner.metadata.latent_dim)
    labels = np.arange(batch, dtype=np.int64) % 10 if runner.metadata.conditional else None
    closed_loop(lambda: runner.run(latents, labels), concurrency, 0.3)
    return closed_loop(lambda: runner.run(latents, labels), concurrency, seconds)


# --- servers ------------------------------------------------------------------------------------

def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def start(target: Target, latent_dim: int, conditional: bool, log_dir: Path) -> None:
    """Start a target, time it to its first answer, then measure it at idle."""
    target.port = free_port()
    command = [part.replace("{port}", str(target.port)) for part in target.command]
    log = log_dir / f"{target.name.replace(' ', '_')}.log"
    started = time.monotonic()
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        target.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **target.env}, cwd=target.cwd,
                                       start_new_session=True)
    call = None
    while True:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited ({target.proc.returncode}); see {log.name}")
        try:
            call = call or _caller(target.kind, target.port, 1, latent_dim, conditional)
            call()
            break
        except Exception:
            if time.monotonic() - started > 180:
                raise RuntimeError(f"{target.name} gave no answer in 180 s; see {log.name}")
            # A fresh channel for the next try: one refused connection puts a channel into
            # gRPC's reconnect backoff (grpcio 1.78: ~5 s before it tries again), which would
            # be timed as the server's start-up.
            call = None
            time.sleep(0.05)
    target.start_s = time.monotonic() - started
    _check_pixels(target, latent_dim, conditional)
    time.sleep(2)
    target.idle_rss_mb = _tree_rss_mb(target.proc.pid)


def _check_pixels(target: Target, latent_dim: int, conditional: bool) -> None:
    """Before timing anything: the target's images equal in-process onnxruntime's."""
    from service.contract import seeds_to_latents
    runner = _RUNNER["runner"]
    latents = seeds_to_latents(range(4), latent_dim)
    labels = np.arange(4, dtype=np.int64) % 10 if conditional else None
    expected = runner.run(latents, labels)
    response = _caller(target.kind, target.port, 4, latent_dim, conditional)()
    raw = response.raw if target.kind == "generate" else response.raw_output_contents[0]
    got = np.frombuffer(raw, np.uint8).reshape(expected.shape)
    if not np.array_equal(got, expected):
        raise RuntimeError(f"{target.name} answered different pixels (max difference "
                           f"{np.abs(got.astype(int) - expected).max()})")


def stop(target: Target) -> None:
    if target.proc and target.proc.poll() is None:
        import signal
        os.killpg(target.proc.pid, signal.SIGTERM)
        try:
            target.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(target.proc.pid, signal.SIGKILL)


def _traced(name: str, serve: list[str], env: dict, sampling: dict) -> Target:
    """`serve` with tracing on, exporting to an OTLP sink started with it (in its process
    tree)."""
    sink = free_port()
    return Target(name, "generate",
                  ["bash", "-c", f"{sys.executable} {ROOT / 'bench' / 'otlp_sink.py'} {sink} & "
                   f"exec {' '.join(serve)}"],
                  {**env, "OTEL_TRACES_EXPORTER": "otlp",
                   "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink}", **sampling})


def baseline_spec(text: str) -> tuple[str, Path]:
    """`--baseline [NAME=]DIR`: the target "baseline" (or "baseline NAME") run from DIR."""
    name, sep, folder = text.rpartition("=")
    return ("baseline " + name if sep and name else "baseline"), Path(folder)


def targets(model: str, peers: Path | None, workdir: Path,
            baselines: list[tuple[str, Path]] = ()) -> list[Target]:
    serve = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "{port}",
             "--metrics-port", "-1", "--device", "cpu", "--model", f"{MODEL_NAME}={model}"]
    env = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    http_off, http_on = ["--http-port", "-1"], ["--http-port", "0"]
    found = [
        Target("in-process", "inproc"),
        Target("dcgan-serve", "generate", serve + http_off, env),
        Target("dcgan-serve -p2", "generate", serve + http_off + ["--processes", "2"], env),
        # The same with the HTTP port open (idle): gRPC must not pay for it.
        Target("dcgan-serve +http", "generate", serve + http_on, env),
        # The same with calls traced, exported over OTLP/gRPC to a sink on this machine
        # (bench/otlp_sink.py, started with it: a collector beside the service).
        _traced("dcgan-serve +trace", serve + http_off, env, {}),
        _traced("dcgan-serve +trace 10%", serve + http_off, env,
                {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                 "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
    ]
    for name, baseline in baselines:  # (every checkout since 0f8887a knows --http-port)
        old = {"PYTHONPATH": str(baseline.resolve()), "PYTHONUNBUFFERED": "1"}
        found += [Target(name, "generate", serve + http_off, old, baseline),
                  Target(name + " -p2", "generate", serve + http_off + ["--processes", "2"],
                         old, baseline)]
    found += [
        Target("handwritten", "v2", [sys.executable, str(PEERS / "handwritten_server.py"),
                                     model, "{port}"], env),
        Target("handwritten aio", "v2", [sys.executable,
                                         str(PEERS / "handwritten_aio_server.py"), model,
                                         "{port}"], env),
    ]
    if peers is None:
        return found
    venv = lambda name: peers / name / "bin"  # noqa: E731
    if (venv("kserve") / "python").exists():
        found.append(Target("kserve", "v2", [str(venv("kserve") / "python"),
                                             str(PEERS / "kserve_server.py"), model, "{port}"]))
    if (venv("mlserver") / "mlserver").exists():
        found.append(Target("mlserver", "v2", [str(venv("mlserver") / "python"),
                                               str(PEERS / "mlserver_runtime.py"), model,
                                               "{port}", str(workdir / "mlserver")]))
    if (venv("pytriton") / "python").exists():
        libdir = subprocess.run([str(venv("pytriton") / "python"), "-c",
                                 "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True).stdout.strip()
        # pytriton's backend stub links the system libpython; point it at the venv's own
        # (see ../shared/notes/peer-servers.md and pytriton issue #51).
        found.append(Target("pytriton", "v2", [str(venv("pytriton") / "python"),
                                               str(PEERS / "pytriton_server.py"), model,
                                               "{port}"], {"LD_LIBRARY_PATH": libdir}))
    return found


# --- the run ------------------------------------------------------------------------------------

def main() -> int:
    from service.process.config import bundled_models
    from service.runtime import OnnxGenerator, RuntimeOptions
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = bundled_models()[0][1] if bundled_models() else None
    parser.add_argument("--model", default=str(default) if default else None)
    parser.add_argument("--peers", type=Path, help="folder of the peers' venvs (setup.sh)")
    parser.add_argument("--batches", default="1,16,64,256")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell")
    parser.add_argument("--only", help="comma-separated target names to run")
    parser.add_argument("--baseline", type=baseline_spec, action="append", default=[],
                        metavar="[NAME=]DIR", help="another checkout of this project to run "
                        "beside this one, as target 'baseline' (or 'baseline NAME'); "
                        "repeatable")
    parser.add_argument("--load", choices=("python", "h2load"), default="python",
                        help="load generator (see above)")
    parser.add_argument("--out", type=Path, help="Markdown report (and .json beside it)")
    args = parser.parse_args()
    if args.load == "h2load" and not shutil.which("h2load"):
        parser.error("--load h2load needs nghttp2's h2load (apt-get install nghttp2-client)")

    runner = OnnxGenerator(args.model, RuntimeOptions(device="cpu", intra_op_threads=0))
    _RUNNER["runner"] = runner
    latent_dim, conditional = runner.metadata.latent_dim, runner.metadata.conditional
    workdir = Path(tempfile.mkdtemp(prefix="compare-servers-"))
    chosen = targets(args.model, args.peers, workdir, args.baseline)
    if args.only:
        chosen = [t for t in chosen if t.name in args.only.split(",")]
    live = []
    try:
        for target in chosen:
            if target.kind != "inproc":
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
        rows = []
        for batch in map(int, args.batches.split(",")):
            for conc in map(int, args.concurrency.split(",")):
                runs: dict[str, list[dict]] = {t.name: [] for t in live}
                for r in range(args.rounds):
                    order = live if r % 2 == 0 else live[::-1]
                    for target in order:
                        runs[target.name].append(drive(target, batch, conc, args.seconds,
                                                       latent_dim, conditional, args.load))
                # --only may leave the ceiling out; the ratio column is then blank.
                ceiling = (float(np.median([x["calls"] * batch / x["seconds"]
                                            for x in runs["in-process"]]))
                           if runs.get("in-process") else None)
                for target in live:
                    row = {"batch": batch, "clients": conc, "target": target.name,
                           "img_s": float(np.median([x["calls"] * batch / x["seconds"]
                                                     for x in runs[target.name]])),
                           "p50_ms": float(np.median([x["p50_ms"] for x in runs[target.name]])),
                           "p99_ms": float(np.median([x["p99_ms"] for x in runs[target.name]]))}
                    row["vs_ceiling"] = row["img_s"] / ceiling if ceiling else None
                    row["errors"] = sum(x.get("errors", 0) for x in runs[target.name])
                    rows.append(row)
                    print(f"batch {batch:4d} clients {conc:2d} {target.name:16s} "
                          f"{row['img_s']:8.0f} img/s p50 {row['p50_ms']:8.3f} ms p99 "
                          f"{row['p99_ms']:8.3f} ms  {_ratio(row['vs_ceiling'])} of ceiling"
                          + (f"  ({row['errors']} calls refused)" if row["errors"] else ""),
                          flush=True)
    finally:
        for target in live:
            stop(target)
    if args.out:
        write_report(args.out, rows, chosen, args)
    return 0


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_report(out: Path, rows: list[dict], chosen: list[Target], args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; model "
             f"`{Path(args.model).name}`; {args.rounds} interleaved rounds of {args.seconds:g} s "
             "per cell (medians).",
             f"Load generator: {args.load}.",
             f"Command: `{command_line()}`", "",
             "| target | start-up to first answer s | idle RSS MB | note |", "|---|---:|---:|---|"]
    for t in chosen:
        lines.append(f"| {t.name} | {t.start_s:.2f} | {t.idle_rss_mb:.0f} | {t.note} |")
    lines += ["", "| batch | clients | target | img/s | p50 ms | p99 ms | of ceiling |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['clients']} | {r['target']} | {r['img_s']:.0f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {_ratio(r['vs_ceiling'])} |"
                     + (f" {r['errors']} calls refused" if r.get("errors") else ""))
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "targets": [{"name": t.name, "start_s": t.start_s,
                                    "idle_rss_mb": t.idle_rss_mb, "note": t.note}
                                   for t in chosen]}, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
