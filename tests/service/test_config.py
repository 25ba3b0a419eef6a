"""ServeConfig from flags and DCGAN_* variables."""

from __future__ import annotations

import os

import pytest

from service.config import ServeConfig, config_from_args


def test_defaults_without_flags_or_environment(monkeypatch):
    for key in ("DCGAN_PORT", "DCGAN_BATCHING", "DCGAN_MODELS"):
        monkeypatch.delenv(key, raising=False)
    cfg = config_from_args([])
    assert (cfg.port, cfg.metrics_port, cfg.batching, cfg.models) == (50051, 9090, True, ())
    assert cfg.resolved_intra_op_threads == 1 and cfg.resolved_inference_workers >= 1


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("DCGAN_PORT", "6000")
    monkeypatch.setenv("DCGAN_BATCHING", "0")
    monkeypatch.setenv("DCGAN_MODELS", "a=/x/a.onnx,/y/b.onnx")
    cfg = config_from_args(["--port", "7000"])
    assert cfg.port == 7000 and not cfg.batching
    assert cfg.models == (("a", "/x/a.onnx"), ("b", "/y/b.onnx"))
    assert cfg.resolved_intra_op_threads == 0  # batching off: onnxruntime uses every core
    assert config_from_args(["--model", "c=/z.onnx"]).models == (("c", "/z.onnx"),)


@pytest.mark.parametrize("argv,message", [
    (["--max-batch", "0"], "--max-batch"),
    (["--batch-max-delay-ms", "-1"], "--batch-max-delay-ms"),
    (["--latent-cache", "-1"], "--latent-cache"),
    (["--batch-max-images", "-1"], "--batch-max-images"),
    (["--max-queued-images", "0"], "--max-queued-images"),
    (["--model", "a=/1.onnx", "--model", "a=/2.onnx"], "unique"),
    (["--device", "tpu"], "invalid choice"),
    (["--processes", "-1"], "--processes"),
])
def test_bad_flags_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_run_size_follows_the_device_unless_set():
    assert ServeConfig().resolved_batch_max_images(on_cuda=False) == 64
    assert ServeConfig().resolved_batch_max_images(on_cuda=True) == 256
    set_by_hand = config_from_args(["--batch-max-images", "100"])
    assert set_by_hand.resolved_batch_max_images(on_cuda=False) == 100


def test_an_explicit_thread_count_is_kept():
    assert ServeConfig(intra_op_threads=3).resolved_intra_op_threads == 3


def test_usable_cpus_follows_a_cgroup_cpu_limit(tmp_path):
    from service.config import usable_cpus
    cpu_max = tmp_path / "cpu.max"
    cores = len(os.sched_getaffinity(0))
    cpu_max.write_text("150000 100000\n")  # a 1.5-CPU limit: two workers
    assert usable_cpus(cpu_max) == min(cores, 2)
    cpu_max.write_text("50000 100000\n")  # under one CPU: still one worker
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("max 100000\n")  # no limit: the affinity mask decides
    assert usable_cpus(cpu_max) == cores
    assert usable_cpus(tmp_path / "absent") == cores


def test_processes_zero_means_one_per_usable_core(monkeypatch):
    from service.config import usable_cpus
    assert config_from_args(["--processes", "0"]).resolved_processes == usable_cpus()
    monkeypatch.setenv("DCGAN_PROCESSES", "0")
    assert config_from_args([]).resolved_processes == usable_cpus()
    assert config_from_args(["--processes", "3"]).resolved_processes == 3
    assert config_from_args([]).processes == 0 and ServeConfig().resolved_processes == 1
