"""Resource telemetry during training: nvitop's ResourceMetricCollector in the background, logged to tracking.

Every ``interval_s`` the monitor logs that interval's statistics -- per GPU utilisation, memory used / percent,
temperature and power; host CPU and memory -- under MLflow-safe names such as
``resources/cuda0_gpu0/gpu_utilization_pct/mean`` (nvitop's own key is
``.../cuda:0 (gpu:0)/gpu_utilization (%)/mean``; MLflow takes only alphanumerics, ``_ - . /`` and spaces, and
colons fail on Windows). At the end, :meth:`ResourceMonitor.stop` returns whole-run figures for
result.json's ``throughput`` section (:func:`summarise`).

GPUs are the ones this process can see (``CUDA_VISIBLE_DEVICES``, nvitop's CUDA ordinal). Whether NVML is there
at all is asked of ``pynvml`` directly, which fails silently: nvitop itself logs a multi-line "FATAL ERROR: NVIDIA
Management Library (NVML) not found" at CRITICAL level (which no logger level hides) from its first device query
on a machine without the driver. Without NVML the collector is given no devices and only host metrics are
collected. Per-process metrics are not collected (no root pids): they cost an NVML process query per snapshot and
the device totals are what decide whether a run fits.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Callable, Dict, List, Optional

# nvitop key: <tag>/<scope>/<metric (unit)>/<stat>, scope "host" or a device such as "cuda:0 (gpu:0)".
_KEY = re.compile(r"^(?P<scope>host|cuda:[^/]+|gpu:[^/]+)/(?P<metric>[^/]+)/(?P<stat>mean|min|max|last)$")
# Of nvitop's metrics, the ones worth a chart; the rest are constant (totals, limits) or noise (fan, swap).
LOGGED = {
    "host": ("cpu_percent (%)", "memory_percent (%)", "memory_used (GiB)"),
    "gpu": (
        "gpu_utilization (%)",
        "memory_utilization (%)",
        "memory_used (MiB)",
        "memory_percent (%)",
        "temperature (C)",
        "power_usage (W)",
    ),
}
_UNITS = {"%": "pct"}


def sanitize(name: str) -> str:
    """An nvitop metric name as an MLflow metric name: ``cuda:0 (gpu:0)/memory_used (MiB)`` -> ``cuda0_gpu0/memory_used_MiB``."""
    name = re.sub(r"\s*\(([^)]*)\)", lambda m: "_" + _UNITS.get(m.group(1), m.group(1)), name)
    name = re.sub(r"[^A-Za-z0-9_\-./ ]", "", name.replace(" ", "_"))
    return re.sub(r"/{2,}", "/", name).strip("/")


def visible_gpus() -> list:
    """nvitop devices for the GPUs this process can see; [] without an NVIDIA driver (and without its noise)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # the library missing, the driver not loaded, a version mismatch: all mean no GPU metrics
        return []
    try:
        from nvitop import Device

        return list(Device.cuda.all())
    except Exception:
        return []
    finally:
        pynvml.nvmlShutdown()


class ResourceMonitor:
    """Background sampling (nvitop's daemon snapshots every ``min(1 s, interval)``) and per-interval logging."""

    def __init__(
        self,
        interval_s: float,
        log: Callable[[dict, int], None],
        step: Optional[Callable[[], int]] = None,
        devices: Optional[list] = None,
    ):
        self.interval_s = max(0.5, float(interval_s))
        self.log = log
        self.step = step
        self.devices = devices
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._collector = None
        self._logged_error = False

    def start(self) -> None:
        from nvitop import ResourceMetricCollector

        devices = visible_gpus() if self.devices is None else self.devices
        self._collector = ResourceMetricCollector(devices, root_pids=(), interval=min(1.0, self.interval_s))
        # Nested tags: "run" accumulates the whole run for stop(); "interval" is cleared after every log.
        self._collector.activate(tag="run")
        self._collector.activate(tag="interval")
        self._thread = threading.Thread(target=self._loop, name="resource-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            try:
                metrics = interval_metrics(self._collector.collect())
                self._collector.clear(tag="interval")
                self.log(metrics, self.step() if self.step else tick)
            except Exception as error:  # telemetry must never stop training
                if not self._logged_error:
                    print(f"warning: resource telemetry: {type(error).__name__}: {error}", file=sys.stderr)
                    self._logged_error = True
            tick += 1

    def stop(self) -> dict:
        """Stop sampling; whole-run figures (see :func:`summarise`)."""
        if self._collector is None:
            return {}
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        self._collector.deactivate(tag="interval")
        run = self._collector.collect()
        self._collector.deactivate(tag="run")
        return summarise(run)


def _parse(metrics: Dict[str, float]) -> List[tuple]:
    """(scope, metric, stat, value) for nvitop's ``<tag>[/<tag>...]/<scope>/<metric>/<stat>`` keys."""
    rows = []
    for key, value in metrics.items():
        match = _KEY.match("/".join(key.split("/")[-3:]))
        if match:
            rows.append((match["scope"], match["metric"], match["stat"], value))
    return rows


def interval_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """One interval's means (and memory maxima) under ``resources/...`` MLflow-safe names."""
    out = {}
    for scope, metric, stat, value in _parse(metrics):
        kind = "host" if scope == "host" else "gpu"
        wanted = stat == "mean" or (stat == "max" and metric.startswith("memory_used"))
        if metric in LOGGED[kind] and wanted and isinstance(value, (int, float)) and value == value:
            out[f"resources/{sanitize(scope)}/{sanitize(metric)}/{stat}"] = float(value)
    return out


def summarise(metrics: Dict[str, float]) -> dict:
    """Whole-run figures from a collect() over the run: means are over time (and GPUs), peaks over both."""
    per: Dict[tuple, List[float]] = {}
    gpus = set()
    for scope, metric, stat, value in _parse(metrics):
        if not isinstance(value, (int, float)) or value != value:
            continue
        if scope != "host":
            gpus.add(scope)
        per.setdefault(("host" if scope == "host" else "gpu", metric, stat), []).append(float(value))

    def mean(key):
        values = per.get(key)
        return sum(values) / len(values) if values else None

    def peak(key):
        values = per.get(key)
        return max(values) if values else None

    figures = {
        "gpu_count": len(gpus),
        "gpu_utilization_mean_pct": mean(("gpu", "gpu_utilization (%)", "mean")),
        "gpu_memory_peak_mib": peak(("gpu", "memory_used (MiB)", "max")),
        "gpu_memory_peak_pct": peak(("gpu", "memory_percent (%)", "max")),
        "gpu_power_mean_w": mean(("gpu", "power_usage (W)", "mean")),
        "gpu_temperature_max_c": peak(("gpu", "temperature (C)", "max")),
        "host_cpu_mean_pct": mean(("host", "cpu_percent (%)", "mean")),
        "host_memory_peak_gib": peak(("host", "memory_used (GiB)", "max")),
    }
    return {k: v for k, v in figures.items() if v is not None}
