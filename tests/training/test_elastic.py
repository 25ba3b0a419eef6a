"""Training across nodes with torchrun's c10d rendezvous, as two single-process nodes on
127.0.0.1 (two torchrun agents, one worker each): the same weights as one process; and
`dcgan-train train --continue`, the command a restarted worker runs again, resuming from the
last checkpoint."""

from __future__ import annotations

import csv
import socket
import subprocess
import time
from pathlib import Path

import torch

from tests.conftest import PYTHON, ROOT, python_env
from tests.training.test_cli import TINY_FLAGS
from training import checkpoints


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(command: list[str], port: int, log_dir: Path) -> list[subprocess.Popen]:
    """Two torchrun agents that meet at 127.0.0.1:`port`, each running `command` once."""
    agent = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc_per_node", "1",
             "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
             "--rdzv_id", "test"]
    nodes = []
    for node in range(2):
        log = (log_dir / f"node{node}.log").open("w")
        nodes.append(subprocess.Popen([*agent, *command], env=python_env(), stdout=log,
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
    return "\n".join(p.read_text()[-3000:] for p in sorted(log_dir.glob("node*.log")))


def test_two_nodes_train_to_one_process_s_weights(tmp_path):
    """With BatchNorm a fixed affine map (as in the single-node check), two nodes of one
    16-image rank each end where one process of 32 does, to float rounding."""
    flags = list(TINY_FLAGS)
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
