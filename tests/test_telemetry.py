"""Telemetry: MLflow-safe names for nvitop's real keys, interval and whole-run figures (GPU keys as nvitop writes
them), and a real collector on this GPU-less machine: host metrics only, no NVML noise."""

from __future__ import annotations

import re
import time

from finetune.train.telemetry import ResourceMonitor, interval_metrics, sanitize, summarise

MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_\-./ ]+$")
GPU = "cuda:0 (gpu:0)"
GPU1 = "cuda:1 (gpu:3)"


def nvitop_keys(prefix: str) -> dict:
    """A collect() result shaped like nvitop 1.7's for two GPUs (key layout copied from its output)."""
    values = {
        f"{prefix}/host/cpu_percent (%)/mean": 50.0,
        f"{prefix}/host/memory_used (GiB)/max": 12.5,
        f"{prefix}/host/memory_used (GiB)/mean": 12.0,
        f"{prefix}/host/load_average (%) (1 min)/mean": 1.5,
        f"{prefix}/duration (s)": 10.0,
        f"{prefix}/timestamp": 1.7e9,
    }
    for device, util, memory in ((GPU, 80.0, 30_000.0), (GPU1, 60.0, 40_000.0)):
        values.update(
            {
                f"{prefix}/{device}/gpu_utilization (%)/mean": util,
                f"{prefix}/{device}/memory_used (MiB)/max": memory,
                f"{prefix}/{device}/memory_used (MiB)/mean": memory - 1000,
                f"{prefix}/{device}/memory_percent (%)/max": memory / 800,
                f"{prefix}/{device}/temperature (C)/max": 70.0,
                f"{prefix}/{device}/power_usage (W)/mean": 400.0,
                f"{prefix}/{device}/fan_speed (%)/mean": float("nan"),
            }
        )
    return values


def test_names_are_mlflow_safe():
    assert sanitize("cuda:0 (gpu:0)") == "cuda0_gpu0"
    assert sanitize("memory_used (MiB)") == "memory_used_MiB"
    assert sanitize("load_average (%) (1 min)") == "load_average_pct_1_min"
    logged = interval_metrics(nvitop_keys("run/interval"))
    assert logged["resources/cuda0_gpu0/gpu_utilization_pct/mean"] == 80.0
    assert logged["resources/cuda1_gpu3/memory_used_MiB/max"] == 40_000.0
    assert logged["resources/host/cpu_percent_pct/mean"] == 50.0
    assert all(MLFLOW_NAME.match(name) and "//" not in name for name in logged)
    assert not any("fan_speed" in name or "load_average" in name or "duration" in name for name in logged)


def test_whole_run_figures():
    figures = summarise(nvitop_keys("run"))
    assert figures["gpu_count"] == 2
    assert figures["gpu_utilization_mean_pct"] == 70.0
    assert figures["gpu_memory_peak_mib"] == 40_000.0
    assert figures["gpu_power_mean_w"] == 400.0 and figures["gpu_temperature_max_c"] == 70.0
    assert figures["host_cpu_mean_pct"] == 50.0 and figures["host_memory_peak_gib"] == 12.5


def test_monitor_without_nvidia_driver_logs_host_metrics_quietly(capfd):
    logged = []
    monitor = ResourceMonitor(interval_s=0.5, log=lambda metrics, step: logged.append((step, metrics)), step=lambda: 7)
    monitor.start()
    time.sleep(1.3)
    figures = monitor.stop()
    out, err = capfd.readouterr()
    assert "NVML" not in out + err and "FATAL" not in out + err
    assert figures["gpu_count"] == 0 and "host_memory_peak_gib" in figures and "gpu_utilization_mean_pct" not in figures
    assert logged and all(step == 7 for step, _ in logged)
    names = set().union(*(metrics for _, metrics in logged))
    assert "resources/host/memory_used_GiB/mean" in names and "resources/host/cpu_percent_pct/mean" in names
    assert all(name.startswith("resources/host/") and MLFLOW_NAME.match(name) for name in names)


def test_a_failing_tracking_store_does_not_stop_the_monitor(capfd):
    def broken(metrics, step):
        raise ConnectionError("tracking server down")

    monitor = ResourceMonitor(interval_s=0.5, log=broken)
    monitor.start()
    time.sleep(1.2)
    assert "host_memory_peak_gib" in monitor.stop()
    assert capfd.readouterr().err.count("tracking server down") == 1
