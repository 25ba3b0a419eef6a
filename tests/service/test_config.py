"""ServeConfig from flags and DCGAN_* variables."""

from __future__ import annotations

import os

import pytest

from service.process.config import ServeConfig, config_from_args


def test_defaults_without_flags_or_environment(monkeypatch):
    for key in ("DCGAN_PORT", "DCGAN_MODELS", "DCGAN_LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)
    cfg = config_from_args([])
    assert cfg == ServeConfig()
    assert (cfg.port, cfg.metrics_port, cfg.models, cfg.log_level) == (50051, 9090, (), "INFO")
    assert cfg.resolved_inference_workers >= 1


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("DCGAN_PORT", "6000")
    monkeypatch.setenv("DCGAN_REUSE_PORT", "true")
    monkeypatch.setenv("DCGAN_LOG_LEVEL", "debug")
    monkeypatch.setenv("DCGAN_MODELS", "a=/x/a.onnx,/y/b.onnx")
    cfg = config_from_args(["--port", "7000"])
    assert cfg.port == 7000 and cfg.reuse_port and cfg.log_level == "DEBUG"
    assert cfg.models == (("a", "/x/a.onnx"), ("b", "/y/b.onnx"))
    assert config_from_args(["--model", "c=/z.onnx"]).models == (("c", "/z.onnx"),)


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("DCGAN_MAX_BATCH", "lots")
    with pytest.raises(SystemExit, match=r"\$DCGAN_MAX_BATCH='lots'"):
        config_from_args([])


def test_every_setting_has_a_flag_a_variable_and_help(capsys):
    from service.settings import specs
    with pytest.raises(SystemExit):
        config_from_args(["--help"])
    shown = capsys.readouterr().out
    for spec in specs(ServeConfig):
        assert spec.flag in shown and spec.env("DCGAN_") in shown, spec.name


@pytest.mark.parametrize("argv,message", [
    (["--max-batch", "0"], "--max-batch"),
    (["--batch-max-delay-ms", "-1"], "--batch-max-delay-ms"),
    (["--latent-cache", "-1"], "--latent-cache"),
    (["--batch-max-images", "-1"], "--batch-max-images"),
    (["--max-queued-images", "0"], "--max-queued-images"),
    (["--model", "a=/1.onnx", "--model", "a=/2.onnx"], "unique"),
    (["--device", "tpu"], "invalid choice"),
    (["--processes", "-1"], "--processes"),
    (["--model-control", "explicit"], "needs --model-repository"),
    (["--model-repository", "/no/such/folder"], "is not a folder"),
    (["--model-control", "explicit", "--model-repository", ".", "--processes", "2"],
     "needs --processes 1"),
    (["--model", "m:=/a.onnx"], "NAME:VERSION=PATH"),
])
def test_bad_flags_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_usable_cpus_follows_a_cgroup_cpu_limit(tmp_path):
    from service.process.config import usable_cpus
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
    from service.process.config import usable_cpus
    assert config_from_args(["--processes", "0"]).resolved_processes == usable_cpus()
    monkeypatch.setenv("DCGAN_PROCESSES", "0")
    assert config_from_args([]).resolved_processes == usable_cpus()
    assert config_from_args(["--processes", "3"]).resolved_processes == 3
    assert config_from_args([]).processes == 0 and ServeConfig().resolved_processes == 1


def test_the_documented_settings_tables_match_the_code():
    import subprocess

    from tests.conftest import PYTHON, ROOT
    proc = subprocess.run([PYTHON, "tools/gen_settings_docs.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
