"""Training across nodes with torchrun's c10d rendezvous, as two single-process nodes on
127.0.0.1 (two torchrun agents, one worker each): the same weights as one process; a worker
killed mid-run restarted by torchrun and resuming from the last checkpoint; and
`dcgan-train train --continue`, the command a restarted worker runs again, on its own."""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import time
from pathlib import Path

import psutil
import torch

from tests.conftest import PYTHON, ROOT, python_env
from tests.training.test_cli import ROUNDING_CHECK_ADAM, TINY_FLAGS
from training import checkpoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(command: list[str], port: int, log_dir: Path,
           max_restarts: int = 0) -> list[subprocess.Popen]:
    """Two torchrun agents that meet at 127.0.0.1:`port`, each running `command`, restarting
    its worker group up to `max_restarts` times."""
    agent = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc_per_node", "1",
             "--max-restarts", str(max_restarts), "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "test"]
    nodes = []
    for node in range(2):
        log = (log_dir / f"node{node}.log").open("w")
        # LOGLEVEL=INFO: torchrun's agents say when they restart a worker group. The workers'
        # own store, fresh each rendezvous round, rather than the agents' shared one, whose
        # state outlives a round (docs/decisions.md, "Scaling out").
        env = python_env() | {"LOGLEVEL": "INFO", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        nodes.append(subprocess.Popen([*agent, *command], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT))
    return nodes


def _finish(nodes: list[subprocess.Popen], log_dir: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            raise AssertionError(_logs(log_dir)) from None
    assert [n.returncode for n in nodes] == [0, 0], _logs(log_dir)


def _logs(log_dir: Path) -> str:
    """Each node's errors, then the end of its log."""
    texts = [p.read_text() for p in sorted(log_dir.glob("node*.log"))]
    return "\n".join("\n".join([line for line in text.splitlines()
                                 if "Error" in line or "Traceback" in line][:30]
                                + ["..."] + [text[-3000:]]) for text in texts)


def test_two_nodes_train_to_one_process_s_weights(tmp_path):
    """With BatchNorm a fixed affine map (as in the single-node check), two nodes of one
    16-image rank each end where one process of 32 does, to float rounding."""
    flags = [*TINY_FLAGS, *ROUNDING_CHECK_ADAM]
    harness = [str(ROOT / "tests" / "training" / "ddp_ranks.py"), "--fixed-norm"]
    out = tmp_path / "two-nodes"
    out.mkdir()
    nodes = _nodes([*harness, str(out), "--", *flags, "--steps", "6", "--out",
                    str(out / "run"), "--device", "cpu"], _free_port(), tmp_path)
    _finish(nodes, tmp_path)
    single_out = tmp_path / "single"
    single_out.mkdir()
    one = [*flags]
    one[one.index("--batch-size") + 1] = "32"
    subprocess.run([PYTHON, *harness, str(single_out), "--", *one, "--steps", "6", "--out",
                    str(single_out / "run"), "--device", "cpu"], env=python_env(), check=True,
                   capture_output=True, timeout=300)
    single = torch.load(single_out / "rank0.pt")
    for rank in (0, 1):
        weights = torch.load(out / f"rank{rank}.pt")
        for net in ("g", "d"):
            worst = max(float((weights[net][k] - single[net][k]).abs().max())
                        for k, v in single[net].items() if v.dtype.is_floating_point)
            assert worst < 1e-5, (rank, net, worst)


def test_the_same_command_run_again_after_a_kill_continues_from_the_checkpoint(tmp_path):
    """What torchrun does to a worker after a failure: run the same command again. With
    `--continue` it resumes from the last checkpoint, trains only the steps lost since it,
    logs every step once, and ends on the weights of a run that was never stopped."""
    steps, every = 300, 50
    command = [PYTHON, "-m", "training", "train", "--continue", *TINY_FLAGS, "--steps",
               str(steps), "--checkpoint-every", str(every), "--device", "cpu"]
    run = tmp_path / "run"
    first = subprocess.Popen([*command, "--out", str(run)], env=python_env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / checkpoints.LAST
    deadline = time.monotonic() + 120
    while not last.exists():  # the first checkpoint: the run is under way
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.02)
    first.kill()  # SIGKILL: no chance to save anything on the way out
    first.wait()
    killed_at = checkpoints.load(run)["step"]
    assert killed_at < steps, "the run was over before the kill"
    again = subprocess.run([*command, "--out", str(run)], env=python_env(), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert checkpoints.load(run)["step"] == steps
    with (run / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, steps + 1))
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")],
                              env=python_env(), cwd=ROOT, capture_output=True, timeout=300)
    assert straight.returncode == 0
    resumed, uninterrupted = checkpoints.load(run), checkpoints.load(tmp_path / "straight")
    for net in ("generator", "discriminator"):
        for key, value in uninterrupted[net].items():
            assert torch.equal(resumed[net][key], value), (net, key)


def test_a_killed_worker_is_restarted_by_torchrun_and_resumes_from_the_checkpoint(tmp_path):
    """Two nodes training 300 steps with a checkpoint every 50; one node's worker is SIGKILLed
    after the first checkpoint. torchrun restarts the worker group on both nodes, every worker
    runs the same command again and continues from the checkpoint (shared --out, as a shared
    volume across nodes), and the run ends on the planned step with each step logged once and
    on the weights of two nodes that were never interrupted."""
    steps, every = 300, 50
    command = ["-m", "training", "train", "--continue", *TINY_FLAGS, "--steps", str(steps),
               "--checkpoint-every", str(every), "--device", "cpu"]
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    killed_dir.mkdir()
    straight_dir.mkdir()
    run = killed_dir / "run"
    nodes = _nodes([*command, "--out", str(run)], _free_port(), killed_dir, max_restarts=2)
    last = run / "checkpoints" / checkpoints.LAST
    deadline = time.monotonic() + 120
    while not last.exists():
        assert all(n.poll() is None for n in nodes) and time.monotonic() < deadline, \
            _logs(killed_dir)
        time.sleep(0.02)
    [worker] = psutil.Process(nodes[1].pid).children()
    worker.kill()  # SIGKILL, mid-run: the other node's worker loses its peer in an allreduce
    _finish(nodes, killed_dir)
    logs = "\n".join(p.read_text() for p in sorted(killed_dir.glob("node*.log")))
    assert "will restart worker group" in logs, logs[-6000:]
    resumed_from = [int(m) for m in re.findall(r"continuing from the checkpoint of step (\d+)",
                                               logs)]
    assert resumed_from and all(0 < step < steps and step % every == 0 for step in resumed_from)
    assert checkpoints.load(run)["step"] == steps
    with (run / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, steps + 1))

    _finish(_nodes([*command, "--out", str(straight_dir / "run")], _free_port(), straight_dir),
            straight_dir)
    resumed, uninterrupted = checkpoints.load(run), checkpoints.load(straight_dir / "run")
    for net in ("generator", "discriminator"):
        for key, value in uninterrupted[net].items():
            assert torch.equal(resumed[net][key], value), (net, key)
