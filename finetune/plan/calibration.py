"""How fast this machine trains the plan's model on the plan's data: measured once, cached, read by the budget.

A calibration is a few optimizer steps of the plan's model on batches drawn from the plan's own training texts
(so at their real token-length distribution, truncated at ``model.max_length``), a few evaluation batches, and
the time a fresh process needs to import the stack and load the model. It runs in a subprocess, so planning
never imports torch (``python -m finetune dry_run=true`` stays light), on one thread as a sweep trial does, then
the same steps on every core (what a trial's threads buy here). The result is cached under
``$XDG_CACHE_HOME/finetune/calibration/`` (``~/.cache`` without it) per machine, model, shape and data; delete the
folder to measure again. The calibration counts the CPU other processes used while it timed: one taken while they
kept a core busy (or every core, by the load average) is taken again when the machine is idle; a machine that got
busier is measured as it is then: the sweep re-estimates from its own trials while it runs
(:func:`finetune.plan.budget.speed_factor`).

``python -m finetune.plan.calibration '<request json>'`` is the subprocess; it prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.config.schema import DatasetConfig, SplitFiles
from finetune.data import prepare
from finetune.errors import UserError
from finetune.plan.budget import LOCAL_STAGES, THREAD_EXPONENT, StageCosts, Throughput, Workload
from finetune.system import cpu
from finetune.tasks import task_of
from finetune.train import hardware

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "finetune" / "calibration"
TRAIN_STEPS = 6  # timed, after one untimed step
EVAL_BATCHES = 3
# What a real trial does that the calibration does not (MLflow run and tracking, the Trainer's setup,
# tokenising every split, the learning check's TF-IDF baseline, saving the model and result.json): measured
# as a default run's trial wall time less its training loop less the calibration's load time
# (docs/performance.md). Constant across models: none of it grows with the model.
TRIAL_EXTRA_S = 14.0
VERSION = 4  # bump when what is measured changes: older cache entries are then ignored


def machine() -> dict:
    """What makes one machine's figures differ from another's (not its name: a copy of a VM measures alike)."""
    name = ""
    try:
        name = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        name = platform.processor()
    return {
        "cpu": name,
        "cores": cpu.cores(),
        "python": platform.python_version(),
        "system": platform.system(),
    }


def request(plan: "RunPlan") -> dict:
    model_dir = Path(plan.model.path) if plan.model.path else None
    config_file = model_dir / "config.json" if model_dir else None
    stamp = config_file.stat().st_mtime if config_file and config_file.exists() else None
    return {
        "version": VERSION,
        "machine": machine(),
        "model": plan.model.path or plan.model.hub_id,
        "model_stamp": stamp,
        "max_length": plan.model.max_length,
        "batch_size": plan.model.batch_size,
        "device": plan.compute.device,
        "precision": plan.compute.precision,
        "dataset": dataclasses.asdict(plan.dataset),
        "task": plan.dataset.task,
    }


def cache_file(spec: dict) -> Path:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return CACHE_DIR.expanduser() / f"{digest}.json"


def calibrate(plan: "RunPlan", busy_now: float) -> tuple[dict, float]:
    """The plan's calibration and the seconds it took now: from the cache (0 s), or measured now (a subprocess
    of some seconds to a minute, which this run's start-up pays for)."""
    spec = request(plan)
    cached = cache_file(spec)
    try:
        entry = json.loads(cached.read_text())
        if not _measured_busy_now_idle(entry, busy_now):
            return entry, 0.0
    except (OSError, ValueError):
        pass
    print(
        f"calibrating the budget: a few training steps of {plan.model.name} on this machine "
        f"(once; cached in {cached.parent})",
        flush=True,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "finetune.plan.calibration", json.dumps({**spec, "started": started})],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"budget: the calibration of {plan.model.name} failed ({last[:200]})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result, time.time() - started


def contended(entry: dict) -> bool:
    """Other processes took a core from the timing (a 2-core VM right after a test run measured 1.00x for two
    threads, then 1.80x idle). Entries before ``others_busy_cores`` only know the load average."""
    return entry.get("others_busy_cores", 0.0) >= cpu.CONTENDED_CORES or entry.get("load_average", 0.0) >= cpu.cores()


def _measured_busy_now_idle(entry: dict, busy_now: float) -> bool:
    """A calibration taken while other processes used the cores says too little of what threads buy: taken
    again once they leave this machine's cores free (``busy_now``: :func:`finetune.system.cpu.busy_cores_now`)."""
    return contended(entry) and busy_now < cpu.CONTENDED_CORES


def learn(plan: "RunPlan", factor: float, stage_seconds: dict, calibration_s: float = 0.0) -> None:
    """Keep how much slower (factor > 1) or faster the last run's trials ran than its calibration said, and
    what its other stages took (its start-up less the ``calibration_s`` it spent calibrating, which the next
    run, finding the cache, does not spend): the next estimate starts from the machine as it last ran."""
    cached = cache_file(request(plan))
    try:
        entry = json.loads(cached.read_text())
    except (OSError, ValueError):
        return
    entry["observed_factor"] = round(entry.get("observed_factor", 1.0) * factor, 4)
    spent = dict(stage_seconds)
    stages = {"data": max(0.0, spent.get("start", 0.0) + spent.get("data", 0.0) - calibration_s)}
    if "automl" in spent:  # its fixed part: what it took beyond its search budget
        stages["automl"] = max(0.0, spent["automl"] - plan.automl.time_budget_s)
    stages.update({name: spent[name] for name in ("select", "register", "deploy", "report") if name in spent})
    entry["stages"] = {**entry.get("stages", {}), **stages}
    entry["observed"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    cached.write_text(json.dumps(entry, indent=2))


def stage_costs(calibration: dict, calibration_s: float = 0.0, speed: Throughput | None = None) -> StageCosts:
    """The stages' seconds as the last run on this machine spent them (the shipped figures before any run), the
    calibration just measured (``calibration_s``) counted in start-up and data, where this run spent it.

    Before any run, selection is expected to take at least the fine-tuned model's pass over val and test at
    ``speed`` (the run's threads): on BC5CDR's 9,378 val and test sentences it took 84 s, not the shipped 14 s."""
    learned = calibration.get("stages", {})
    costs = StageCosts(
        **{name: learned.get(name, getattr(LOCAL_STAGES, name)) for name in StageCosts.__dataclass_fields__}
    )
    if "select" not in learned and speed is not None:
        rows = calibration["rows"]
        costs = dataclasses.replace(
            costs, select=max(costs.select, (rows["val"] + rows.get("test", 0)) * speed.eval_example_s)
        )
    return dataclasses.replace(costs, data=costs.data + calibration_s)


def throughput(calibration: dict, busy_now: float, cores: int) -> Throughput:
    """The calibration's figures for a machine whose other processes keep ``busy_now`` of its ``cores`` busy."""
    factor = calibration.get("observed_factor", 1.0)
    basis = f"calibrated on this machine {calibration['measured']} (load {calibration['load_average']:.1f})"
    if "precision" in calibration:
        basis = f"{calibration['precision']} steps " + basis
    if "others_busy_cores" in calibration:
        basis = basis[:-1] + f", other processes {calibration['others_busy_cores']:.1f} cores)"
    if "observed" in calibration:
        basis += f", x {factor:.2f} as the last sweep ran ({calibration['observed']})"
    measured_exponent = calibration.get("thread_exponent")
    if measured_exponent is not None:
        basis += f", {cores} threads measured {cores**measured_exponent:.2f}x one"
    busy = busy_now >= cores - cpu.CONTENDED_CORES
    if busy:
        basis += f"; busy now (others use {busy_now:.1f} of {cores} cores): more threads a trial count as no faster"
    return Throughput(
        train_example_s=calibration["train_example_s"] * factor,
        eval_example_s=calibration["eval_example_s"] * factor,
        trial_overhead_s=calibration["load_s"] + TRIAL_EXTRA_S,
        threads=calibration["threads"],
        basis=basis,
        thread_exponent=0.0 if busy else calibration.get("thread_exponent", THREAD_EXPONENT),
    )


def workload(calibration: dict, evals_per_epoch: int) -> Workload:
    return Workload(calibration["rows"]["train"], calibration["rows"]["val"], evals_per_epoch)


# ------------------------------------------------------------------------------------- the measurement


def _batches(lengths: list, batch_size: int, steps: int, seed: int = 0) -> list:
    """``steps`` batches as training draws them: length-grouped (a megabatch of 50 batches sorted by length),
    one from the middle of each of ``steps`` equal slices of the megabatch. Not its ends: the longest batch holds
    the longest text there is (115 tokens where the others had 9-28 on GoEmotions), and timing it with the
    shortest left out as warm-up made the estimate 2.5x a real training's steps."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    mega = sorted(order[: 50 * batch_size], key=lambda i: lengths[i])
    groups = [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    return [groups[int((k + 0.5) * len(groups) / steps)] for k in range(steps)]


def measure(spec: dict) -> dict:
    """Run the calibration described by ``spec`` (:func:`request`) in this process."""
    dataset_fields = dict(spec["dataset"])
    dataset_fields["split_files"] = SplitFiles(**(dataset_fields.get("split_files") or {}))
    with tempfile.TemporaryDirectory(prefix="finetune-calibration-") as scratch:
        data = prepare(DatasetConfig(**dataset_fields), Path(scratch) / "data")
        # The task reads its own split files (NER's are JSONL sentences): the timing needs their texts only.
        task = task_of(data.task)
        train_texts, val_texts = task.split_texts(data.train_path), task.split_texts(data.val_path)
        rows = {split: info["rows"] for split, info in data.splits.items()}
        labels = len(data.labels)
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    device = "cuda" if spec["device"] != "cpu" and torch.cuda.is_available() else "cpu"
    # Timed in the format training will use: on a CPU with native bf16, fp32 steps took twice a bf16 trial's.
    precision = spec["precision"] if spec["precision"] != "auto" else hardware.auto_precision(hardware.detect(device))
    autocast = lambda: torch.autocast(  # noqa: E731
        device_type=device,
        dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        enabled=precision in ("bf16", "fp16"),
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=labels).to(device)
    load_s = time.time() - spec["started"]
    encode = lambda texts: tokenizer(texts, truncation=True, max_length=spec["max_length"])["input_ids"]  # noqa: E731
    train_ids, val_ids = encode(train_texts), encode(val_texts)
    batch_size = spec["batch_size"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def tensors(ids: list):
        padded = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        return {key: value.to(device) for key, value in padded.items()}

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    window = cpu.cpu_marks()
    batches = _batches([len(x) for x in train_ids], batch_size, TRAIN_STEPS)
    timed, examples = 0.0, 0
    # The median batch once untimed first (allocator warm-up, lazy initialisation).
    for step, batch in enumerate([batches[len(batches) // 2], *batches]):
        inputs = tensors([train_ids[i] for i in batch])
        labels_tensor = torch.zeros(len(batch), dtype=torch.long, device=device)
        sync()
        started = time.perf_counter()
        with autocast():
            loss = model(**inputs, labels=labels_tensor).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sync()
        if step:
            timed += time.perf_counter() - started
            examples += len(batch)
    # The same steps on every core this process may use: how much a trial's threads really buy on this machine
    # (a small model's matmuls do not split perfectly, and a busy machine has no free core to give).
    cores = cpu.cores()
    thread_exponent = None
    if device == "cpu" and cores > 1 and timed > 0:
        torch.set_num_threads(cores)
        parallel = 0.0
        for batch in batches:
            inputs = tensors([train_ids[i] for i in batch])
            started = time.perf_counter()
            with autocast():
                loss = model(**inputs, labels=torch.zeros(len(batch), dtype=torch.long)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            parallel += time.perf_counter() - started
        torch.set_num_threads(1)
        thread_exponent = min(1.0, max(0.0, math.log(timed / parallel) / math.log(cores)))
    others = cpu.others_busy_cores(window)
    model.eval()
    eval_size = batch_size * 2  # finetune.train's per_device_eval_batch_size
    eval_time, eval_examples = 0.0, 0
    with torch.no_grad():
        for k in range(min(EVAL_BATCHES, max(1, len(val_ids) // eval_size))):
            chunk = val_ids[k * eval_size : (k + 1) * eval_size]
            inputs = tensors(chunk)
            sync()
            started = time.perf_counter()
            with autocast():
                model(**inputs)
            sync()
            eval_time += time.perf_counter() - started
            eval_examples += len(chunk)
    return {
        "train_example_s": timed / examples,
        "eval_example_s": eval_time / max(1, eval_examples),
        "load_s": round(load_s, 2),
        "threads": 1,
        "thread_exponent": thread_exponent,
        "device": device,
        "precision": precision,
        "rows": rows,
        "gpus": torch.cuda.device_count() if device == "cuda" else 0,
        "mean_tokens": sum(map(len, train_ids)) / max(1, len(train_ids)),
        "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average": os.getloadavg()[0],
        "others_busy_cores": round(others, 2),
    }


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    print(json.dumps(measure(json.loads(sys.argv[1]))))
