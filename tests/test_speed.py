"""Hardware defaults (decided for hand-built hardware, so GPU rules are checked without a GPU), the batch-size and
learning-rate rule, the multi-GPU command, the config -> CLI flags contract, and a smoke run of the benchmark."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from finetune.config.schema import ComputeConfig, TrainConfig
from finetune.config.spec import TrainArgs, parse_args, to_argv
from finetune.errors import UserError
from finetune.train import hardware as speed
from finetune.train.hardware import Hardware, decide
from finetune.train.process import launch_command

REPO = Path(__file__).resolve().parent.parent
H200 = Hardware(device="cuda", name="NVIDIA H200", capability=(9, 0), native_bf16=True, free_cores=16)
A100 = Hardware(device="cuda", name="NVIDIA A100-SXM4-80GB", capability=(8, 0), native_bf16=True, free_cores=8)
T4 = Hardware(device="cuda", name="Tesla T4", capability=(7, 5), native_bf16=False, free_cores=4)
L4 = Hardware(device="cuda", name="NVIDIA L4", capability=(8, 9), native_bf16=True, free_cores=4)
CPU = Hardware(device="cpu", name="Xeon", native_bf16=False, free_cores=2)
CPU_AMX = Hardware(device="cpu", name="Xeon Sapphire Rapids", native_bf16=True, free_cores=8)


def args(**overrides) -> TrainArgs:
    return TrainArgs("train.csv", "val.csv", "labels.json", "model", "out", **overrides)


def test_h100_class_card_gets_bf16_compile_with_bucketing_and_the_rest():
    runtime = decide(args(), H200)
    assert (runtime.precision, runtime.torch_compile, runtime.pad_to_multiple_of) == ("bf16", True, 64)
    assert runtime.tf32 and runtime.optim == "adamw_torch_fused" and runtime.attn_implementation == "sdpa"
    assert runtime.group_by_length and runtime.dataloader_workers == 2
    kwargs = runtime.trainer_kwargs()
    assert kwargs["bf16"] and kwargs["tf32"] and kwargs["torch_compile"] and kwargs["dataloader_pin_memory"]
    assert kwargs["train_sampling_strategy"] == "group_by_length" and kwargs["dataloader_persistent_workers"]
    assert not kwargs["use_cpu"] and "fp16" not in kwargs


def test_compile_follows_the_per_card_table_and_needs_bucketing():
    assert decide(args(), A100).torch_compile
    for card in (T4, L4):
        runtime = decide(args(), card)
        assert not runtime.torch_compile and runtime.pad_to_multiple_of == 8
        assert "no measured gain" in runtime.compile_reason
    fine_padding = decide(args(pad_to_multiple_of=8), H200)
    assert not fine_padding.torch_compile and "recompiles" in fine_padding.compile_reason
    assert decide(args(torch_compile="on"), T4).torch_compile
    assert not decide(args(torch_compile="off"), H200).torch_compile


def test_pre_ampere_card_gets_fp16_with_loss_scaling_and_no_tf32():
    runtime = decide(args(), T4)
    assert runtime.precision == "fp16" and runtime.trainer_kwargs()["fp16"]
    assert not runtime.tf32 and runtime.trainer_kwargs()["tf32"] is False


def test_cpu_defaults_fp32_without_native_bf16_and_bf16_with_it():
    runtime = decide(args(), CPU)
    assert runtime.precision == "fp32" and not runtime.torch_compile and runtime.pad_to_multiple_of is None
    assert runtime.dataloader_workers == 0 and runtime.threads == 2 and runtime.group_by_length
    kwargs = runtime.trainer_kwargs()
    assert kwargs["use_cpu"] and not kwargs["dataloader_pin_memory"] and "bf16" not in kwargs and "tf32" not in kwargs
    assert decide(args(), CPU_AMX).precision == "bf16"
    assert decide(args(num_threads=1), CPU).threads == 1
    assert "emulated" in decide(args(precision="bf16"), CPU).notes[0]
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        decide(args(precision="fp16"), CPU)


def test_processes_share_the_cores():
    runtime = decide(args(), replace(H200, world_size=4))
    assert runtime.threads == 4 and runtime.dataloader_workers == 2 and runtime.world_size == 4
    assert decide(args(), replace(T4, world_size=4)).dataloader_workers == 0


def test_learning_rate_rule_and_batch_cap():
    assert speed.scaled_learning_rate(5e-5, 64, 16, "sqrt") == pytest.approx(1e-4)
    assert speed.scaled_learning_rate(5e-5, 64, 16, "linear") == pytest.approx(2e-4)
    assert speed.scaled_learning_rate(5e-5, 64, 16, "none") == 5e-5
    base = args(batch_size=16, max_batch_size=128)
    assert speed.batch_cap(base, 100_000, 1) == 128
    assert speed.batch_cap(base, 2088, 1) == 32  # the bundled reviews' train split: >= 50 steps per epoch
    assert speed.batch_cap(base, 2088, 2) == 16
    assert speed.batch_cap(base, 300, 1) == 16  # never below the model's own batch for a small dataset


def test_cpu_keeps_the_model_batch_and_several_processes_scale_the_learning_rate():
    on_cpu = speed.plan_batch(
        args(auto_batch_size=True, batch_size=16, learning_rate=4e-5),
        decide(args(), CPU),
        model=None,
        train_rows=10_000,
    )
    assert (on_cpu.batch_size, on_cpu.learning_rate, on_cpu.global_batch_size) == (16, 4e-5, 16)
    assert "CPU" in on_cpu.how
    four = decide(args(), replace(CPU, world_size=4))
    ddp = speed.plan_batch(
        args(batch_size=16, learning_rate=4e-5, gradient_accumulation_steps=2), four, model=None, train_rows=10_000
    )
    assert ddp.global_batch_size == 128 and ddp.learning_rate == pytest.approx(8e-5)


def test_auto_batch_on_a_gpu_is_the_largest_that_fits_with_the_learning_rate_scaled(monkeypatch):
    probed = []

    def probe(model, max_length, precision):
        assert (max_length, precision) == (128, "bf16")
        return lambda batch: probed.append(batch) or batch <= 40

    monkeypatch.setattr(speed, "cuda_fit_probe", probe)
    plan = speed.plan_batch(
        args(auto_batch_size=True, batch_size=16, learning_rate=5e-5),
        decide(args(), H200),
        model=None,
        train_rows=100_000,
    )
    assert probed == [128, 64, 32] and plan.batch_size == 32
    assert plan.learning_rate == pytest.approx(5e-5 * math.sqrt(2)) and "sqrt" in plan.how
    small_data = speed.plan_batch(
        args(auto_batch_size=True, batch_size=16), decide(args(), H200), model=None, train_rows=2088
    )
    assert small_data.batch_size == 32 and probed[-1] == 32  # capped by steps per epoch, probed from the cap
    with pytest.raises(UserError, match="does not fit"):
        speed.largest_batch(lambda batch: False, 8)


def test_launch_command_uses_accelerate_for_several_gpus():
    argv = ["--train-file", "t.csv", "--output-dir", "out"]
    assert launch_command(argv, gpus=1, python="py") == ["py", "-m", "finetune.train", *argv]
    command = launch_command(argv, gpus=4, python="py")
    assert command[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4" and "--multi_gpu" in command
    assert command[command.index("-m", 3) :] == ["-m", "finetune.train", *argv]


def test_train_args_round_trip_through_the_command_line():
    sent = args(
        precision="bf16",
        torch_compile="off",
        pad_to_multiple_of=16,
        max_batch_size=64,
        lr_scaling="linear",
        tf32=False,
        checkpoint_every_steps=25,
        telemetry_interval_s=2.0,
        auto_batch_size=False,
        early_stopping_patience=3,
        trial_number=4,
        learning_rate=3e-5,
    )
    parsed = parse_args(to_argv(sent))
    assert parsed == sent
    assert (parsed.precision, parsed.tf32, parsed.auto_batch_size, parsed.trial_number) == ("bf16", False, False, 4)


def test_check_compute_names_bad_settings(tmp_path):
    from finetune.cli import main as cli
    from finetune.plan.build import build_plan

    overrides = [
        f"output_root={tmp_path}",
        "compute.precision=fp8",
        "compute.device=cpu",
        "compute.gpus=2",
        "compute.max_batch_size=0",
        "compute.lr_scaling=cubic",
        "train.checkpoint_every_steps=-1",
        "train.telemetry_interval_s=0",
    ]
    with pytest.raises(UserError) as raised:
        build_plan(cli.compose(overrides, {}), overrides, "t")
    for fragment in (
        "compute.precision=fp8",
        "compute.lr_scaling=cubic",
        "compute.max_batch_size=0",
        "compute.gpus=2 with compute.device=cpu",
        "train.checkpoint_every_steps=-1",
        "train.telemetry_interval_s=0",
    ):
        assert fragment in str(raised.value)
    assert speed.check_compute(type("Plan", (), {"compute": ComputeConfig(), "train": TrainConfig()})) == []


def test_detect_on_this_machine():
    hardware = speed.detect("cpu")
    assert hardware.device == "cpu" and hardware.free_cores >= 1
    assert isinstance(speed.cpu_has_native_bf16(), bool)


@pytest.mark.slow  # the training benchmark
def test_bench_smoke(tmp_path):
    """The benchmark script runs end to end on CPU with a small model (a smoke test, not a timing)."""
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_train.py"),
            "--small",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--samples",
            "16",
            "--warmup-epochs",
            "0",
            "--max-length",
            "64",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    reference, defaults = report["runs"]
    assert reference["batch_size"] == 8 and not reference["group_by_length"] and reference["precision"] == "fp32"
    assert defaults["group_by_length"] and defaults["speedup"] > 0
    for row in report["runs"]:
        assert row["samples_per_s"] > 0 and 0 < row["fraction_of_peak"] and math.isfinite(row["model_tflops"])
    assert "samples/s" in completed.stdout and "of peak" in completed.stdout
