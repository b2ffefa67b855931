"""Resource telemetry during training: nvitop's ResourceMetricCollector sampled in a background thread.

On a machine without NVIDIA drivers only host metrics (CPU, memory) are collected, and nvitop's NVML
errors are kept out of the output.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional


class ResourceMonitor:
    def __init__(self, interval_s: float, log: Callable[[dict, int], None]):
        self.interval_s = max(0.5, float(interval_s))
        self.log = log
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._samples: list[dict] = []

    def start(self) -> None:
        logging.getLogger("nvitop").setLevel(logging.CRITICAL)
        from nvitop import ResourceMetricCollector

        self._collector = ResourceMetricCollector(root_pids={__import__("os").getpid()}, interval=self.interval_s)
        self._collector.start(tag="resources")
        self._thread = threading.Thread(target=self._loop, name="resource-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        step = 0
        while not self._stop.wait(self.interval_s):
            metrics = {k.replace("/", "_"): v for k, v in self._collector.collect().items()
                       if isinstance(v, (int, float))}
            self._samples.append(metrics)
            self.log(metrics, step)
            step += 1

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s * 2)
            self._collector.stop()
        return summarise(self._samples)


def summarise(samples: list[dict]) -> dict:
    """Per-run figures for summary.json: peak GPU memory and mean GPU utilisation when a GPU was seen."""
    figures: dict = {}
    gpu_util = [v for s in samples for k, v in s.items() if "gpu_utilization" in k and k.endswith("mean")]
    gpu_mem = [v for s in samples for k, v in s.items() if "memory_used" in k and "gpu" in k and k.endswith("max")]
    if gpu_util:
        figures["gpu_utilization_mean_pct"] = sum(gpu_util) / len(gpu_util)
    if gpu_mem:
        figures["gpu_memory_peak_mib"] = max(gpu_mem)
    cpu = [v for s in samples for k, v in s.items() if k.startswith("resources_host_cpu_percent") and k.endswith("mean")]
    if cpu:
        figures["host_cpu_percent_mean"] = sum(cpu) / len(cpu)
    return figures
