"""Scoring cost of the reference's per-request Trainer against score.py's run(), same model, same CPU.

    python scripts/bench_score.py [--model-dir DIR] [--requests 40] [--batches 8] [--threads N]

The reference scored each request by building a ``datasets.Dataset`` and a ``Trainer`` and calling
``Trainer.predict``. ``score.run()`` tokenizes the request once and runs the model under
``torch.inference_mode``. The bare forward pass over pre-tokenized batches is the ceiling. Requests are
real reviews from the bundled Automotive data: 2-review requests for latency (p50/p95), 32-review
requests for throughput. The three are measured interleaved, request by request, so that load from
other processes on a shared machine falls on all of them alike.

Goals: run() p50 at least 5x lower than the reference; run() throughput at least 80% of the bare forward.
Default model: the packaged MiniLM with a fresh 2-label head (its speed is what matters here, not its
accuracy); ``--model-dir`` takes any hf candidate folder (with candidate.json) instead.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

LABELS = ["negative", "positive"]
MAX_LENGTH = 128  # score.py's default, the training default: every approach truncates alike


def packaged_candidate(folder: Path) -> Path:
    """The packaged MiniLM with a fresh 2-label head, saved as an hf candidate."""
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune.config import ModelConfig
    from finetune.plan import package_model_dir

    settings = yaml.safe_load(resources.files("finetune.conf").joinpath("model/minilm-l6.yaml").read_text())
    base = package_model_dir(ModelConfig(**settings))
    if base is None:
        sys.exit(f"the packaged model {settings['package']} is not installed; pass --model-dir")
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "candidate.json").write_text(json.dumps({"kind": "hf", "labels": LABELS}))
    return folder


def reviews() -> list[str]:
    path = resources.files("finetune").joinpath("data_files/automotive_reviews.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        texts = [row["review_body"] for row in csv.DictReader(handle) if row["review_body"].strip()]
    random.Random(0).shuffle(texts)
    return texts


class Reference:
    """The reference's scoring: a Dataset and a Trainer built for every request, Trainer.predict."""

    def __init__(self, model, tokenizer, scratch: Path):
        self.model, self.tokenizer, self.scratch = model, tokenizer, scratch

    def __call__(self, texts: list[str]):
        import datasets
        import numpy as np
        from transformers import Trainer, TrainingArguments

        dataset = datasets.Dataset.from_dict({"text": texts}).map(
            lambda batch: self.tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH),
            batched=True, remove_columns=["text"])
        arguments = TrainingArguments(output_dir=str(self.scratch), per_device_eval_batch_size=32, report_to="none",
                                      disable_tqdm=True, dataloader_pin_memory=False)
        logits = Trainer(model=self.model, args=arguments, processing_class=self.tokenizer).predict(dataset).predictions
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an hf candidate folder (default: packaged MiniLM, fresh head)")
    parser.add_argument("--requests", type=int, default=40, help="2-review requests per approach (default 40)")
    parser.add_argument("--batches", type=int, default=8, help="32-review requests per approach (default 8)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every approach (default 1: on a machine shared with other busy "
                             "processes, more threads measure contention rather than scoring)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FINETUNE_NUM_THREADS"] = str(args.threads)
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        scratch = Path(scratch)
        candidate = args.model_dir or packaged_candidate(scratch / "candidate")

        os.environ["AZUREML_MODEL_DIR"] = str(candidate)
        spec = importlib.util.spec_from_file_location("score", Path(__file__).resolve().parents[1]
                                                      / "finetune" / "serve" / "score.py")
        score = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(score)
        score.init()

        tokenizer = AutoTokenizer.from_pretrained(candidate)
        model = AutoModelForSequenceClassification.from_pretrained(candidate).eval()
        reference = Reference(model, tokenizer, scratch / "trainer")

        def bare(texts):
            batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            started = time.perf_counter()
            with torch.inference_mode():
                model(**batch)
            return time.perf_counter() - started

        approaches = {
            "reference (Dataset + Trainer.predict per request)": lambda texts: _timed(reference, texts),
            "score.py run()": lambda texts: _timed(score.run, json.dumps({"data": [{"text": t} for t in texts]})),
            "bare forward (pre-tokenized, ceiling)": bare,
        }
        texts = reviews()
        needed = 2 * args.requests + 32 * args.batches
        texts = (texts * (needed // len(texts) + 1))[:needed]
        small = [texts[2 * i:2 * i + 2] for i in range(args.requests)]
        large = [texts[2 * args.requests + 32 * i:2 * args.requests + 32 * (i + 1)] for i in range(args.batches)]

        for approach in approaches.values():  # warm-up: first calls pay for lazy initialisation
            approach(small[0]), approach(large[0])
        latency = {name: [] for name in approaches}
        busy = {name: 0.0 for name in approaches}
        for request in small:
            for name, approach in approaches.items():
                latency[name].append(approach(request) * 1e3)
        for request in large:
            for name, approach in approaches.items():
                busy[name] += approach(request)

    reviews_scored = 32 * args.batches
    print(f"model: {candidate if args.model_dir else 'packaged MiniLM-L6, fresh 2-label head'}; "
          f"torch threads: {args.threads}; max_length {MAX_LENGTH}; {args.requests} x 2-review and "
          f"{args.batches} x 32-review requests of real reviews\n")
    print(f"{'approach':<52}{'p50 ms':>9}{'p95 ms':>9}{'reviews/s':>11}")
    for name in approaches:
        p50, p95 = _percentile(latency[name], 50), _percentile(latency[name], 95)
        print(f"{name:<52}{p50:>9.1f}{p95:>9.1f}{reviews_scored / busy[name]:>11.1f}")
    names = list(approaches)
    speedup = _percentile(latency[names[0]], 50) / _percentile(latency[names[1]], 50)
    share = busy[names[2]] / busy[names[1]]
    print(f"\np50 latency, reference / run(): {speedup:.1f}x (goal >= 5x)")
    print(f"throughput, run() / bare forward: {share:.0%} (goal >= 80%)")
    return 0


def _timed(function, argument) -> float:
    started = time.perf_counter()
    function(argument)
    return time.perf_counter() - started


def _percentile(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[percent - 1]


if __name__ == "__main__":
    sys.exit(main())
