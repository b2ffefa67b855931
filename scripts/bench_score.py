"""Scoring speed and accuracy per serving runtime (torch, onnx, onnx-int8), same model, same threads.

    python scripts/bench_score.py --model-dir RUN/train/model --test-file RUN/data/test.csv
        [--requests 40] [--batches 8] [--threads 1] [--predict-rows 10000 100000] [--with-reference]
    python scripts/bench_score.py --count-weights OUTPUT_ROOT   # copies of the weights on disk

``--model-dir`` (an hf candidate folder; default: the packaged MiniLM with a fresh 2-label head) is
exported by the project's export stage to ONNX and ONNX int8. For each runtime score.py's ``run()``
is timed on 2-review requests (p50/p95) and 32-review requests (throughput) against the PyTorch fp32
bare forward (pre-tokenized batches, the old ceiling); all are measured interleaved, request by
request, so that load from other processes on a shared machine falls on all of them alike.
``--with-reference`` adds the reference's per-request ``Trainer.predict``. ``--test-file`` adds test AUC
and F1 macro per runtime (score.py's probabilities, the project's metric function). ``python -m
finetune.predict`` runs in a child process per row count on a CSV of replicated bundled reviews: rows/s
against the same runtime's bare forward and the child's peak RSS.

Goals (issue 13): onnx-int8 run() throughput >= 2x the PyTorch fp32 bare forward and 2-review p50 <=
half of torch run()'s; its test AUC within 0.003 and F1 macro within 0.005 of fp32; predict >= 90% of
its runtime's bare forward; peak RSS at the largest row count <= 1.2x that at the smallest.
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
RUNTIMES = ("torch", "onnx", "onnx-int8")
MAX_LENGTH = 128  # score.py's default, the training default: every approach truncates alike


def packaged_candidate(folder: Path) -> Path:
    """The packaged MiniLM with a fresh 2-label head, saved as an hf candidate."""
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune.config.model_files import package_model_dir
    from finetune.config.schema import ModelConfig

    settings = yaml.safe_load(resources.files("finetune.conf").joinpath("model/minilm-l6.yaml").read_text())
    base = package_model_dir(ModelConfig(**settings))
    if base is None:
        sys.exit(f"the packaged model {settings['package']} is not installed; pass --model-dir")
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "candidate.json").write_text(json.dumps({"family": "hf", "labels": LABELS}))
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
            batched=True,
            remove_columns=["text"],
        )
        arguments = TrainingArguments(
            output_dir=str(self.scratch),
            per_device_eval_batch_size=32,
            report_to="none",
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        logits = Trainer(model=self.model, args=arguments, processing_class=self.tokenizer).predict(dataset).predictions
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, help="an hf candidate folder (default: packaged MiniLM, fresh head)")
    parser.add_argument("--test-file", type=Path, help="a test split (text,label CSV): AUC and F1 macro per runtime")
    parser.add_argument("--requests", type=int, default=40, help="2-review requests per approach (default 40)")
    parser.add_argument("--batches", type=int, default=8, help="32-review requests per approach (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for every approach (default 1: on a machine shared with other busy "
        "processes, more threads measure contention rather than scoring)",
    )
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument(
        "--predict-rows",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        help="row counts for python -m finetune.predict (default 10000 100000; none to skip)",
    )
    parser.add_argument("--predict-runtime", default="onnx-int8", choices=RUNTIMES)
    parser.add_argument("--with-reference", action="store_true", help="also time the reference's Trainer.predict")
    parser.add_argument(
        "--count-weights",
        type=Path,
        metavar="OUTPUT_ROOT",
        help="only count the copies of model weights under OUTPUT_ROOT (hard links once)",
    )
    args = parser.parse_args(argv)
    if args.count_weights:
        print(weight_copies(args.count_weights))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FINETUNE_NUM_THREADS"] = str(args.threads)
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from finetune.serve.export import export_candidate

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        scratch = Path(scratch)
        candidate = args.model_dir or packaged_candidate(scratch / "candidate")
        folders, export_s = {}, {}
        for runtime in args.runtimes:
            started = time.perf_counter()
            folders[runtime] = export_candidate(candidate, runtime, scratch / runtime)
            export_s[runtime] = time.perf_counter() - started
        scores = {runtime: load_score(folder, runtime) for runtime, folder in folders.items()}

        tokenizer = AutoTokenizer.from_pretrained(candidate)
        model = AutoModelForSequenceClassification.from_pretrained(candidate).eval()

        def bare(texts):
            batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            started = time.perf_counter()
            with torch.inference_mode():
                model(**batch)
            return time.perf_counter() - started

        approaches = {}
        if args.with_reference:
            reference = Reference(model, tokenizer, scratch / "trainer")
            approaches["reference (Dataset + Trainer.predict per request)"] = lambda texts: _timed(reference, texts)
        for runtime, score in scores.items():
            approaches[f"run(), {runtime}"] = lambda texts, score=score: _timed(
                score.run, json.dumps({"data": [{"text": t} for t in texts]})
            )
        approaches["PyTorch fp32 bare forward (pre-tokenized)"] = bare
        texts = reviews()
        needed = 2 * args.requests + 32 * args.batches
        pool = (texts * (needed // len(texts) + 1))[:needed]
        small = [pool[2 * i : 2 * i + 2] for i in range(args.requests)]
        large = [pool[2 * args.requests + 32 * i : 2 * args.requests + 32 * (i + 1)] for i in range(args.batches)]

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

        quality = evaluate(scores, args.test_file) if args.test_file else {}
        predicted = {}
        if args.predict_rows:
            score = scores.get(args.predict_runtime) or load_score(
                export_candidate(candidate, args.predict_runtime, scratch / args.predict_runtime), args.predict_runtime
            )
            ceiling = bare_forward_rate(score._scorer, texts[:512], tokenizer)
            for rows in args.predict_rows:
                predicted[rows] = run_predict(
                    folders.get(args.predict_runtime) or scratch / args.predict_runtime,
                    texts,
                    rows,
                    scratch,
                    args.threads,
                )
                predicted[rows]["ceiling"] = ceiling

    reviews_scored = 32 * args.batches
    print(
        f"model: {candidate if args.model_dir else 'packaged MiniLM-L6, fresh 2-label head'}; threads: {args.threads}; "
        f"max_length {MAX_LENGTH}; {args.requests} x 2-review and {args.batches} x 32-review requests of real "
        f"reviews; export: " + ", ".join(f"{r} {s:.1f} s" for r, s in export_s.items()) + "\n"
    )
    print(f"{'approach':<52}{'p50 ms':>9}{'p95 ms':>9}{'reviews/s':>11}{'x bare fp32':>13}")
    ceiling_name = "PyTorch fp32 bare forward (pre-tokenized)"
    for name in approaches:
        p50, p95 = _percentile(latency[name], 50), _percentile(latency[name], 95)
        print(
            f"{name:<52}{p50:>9.1f}{p95:>9.1f}{reviews_scored / busy[name]:>11.1f}"
            f"{busy[ceiling_name] / busy[name]:>12.2f}x"
        )
    if "run(), torch" in latency:
        torch_p50 = _percentile(latency["run(), torch"], 50)
        for runtime in scores:
            name = f"run(), {runtime}"
            print(f"p50 {runtime} run() / torch run(): {_percentile(latency[name], 50) / torch_p50:.2f}")
    if quality:
        print(f"\n{'runtime':<12}{'test AUC':>10}{'F1 macro':>10}{'dAUC':>9}{'dF1':>9}")
        base = quality.get("torch")
        for runtime, metrics in quality.items():
            delta = (
                f"{metrics['auc_weighted'] - base['auc_weighted']:>+9.4f}{metrics['f1_macro'] - base['f1_macro']:>+9.4f}"
                if base
                else ""
            )
            print(f"{runtime:<12}{metrics['auc_weighted']:>10.4f}{metrics['f1_macro']:>10.4f}{delta}")
    if predicted:
        print(f"\npython -m finetune.predict ({args.predict_runtime}, CSV in, CSV out):")
        print(f"{'rows':>9}{'rows/s':>10}{'bare fwd rows/s':>17}{'share':>8}{'peak RSS MiB':>14}")
        for rows, result in predicted.items():
            print(
                f"{rows:>9}{result['rows_per_s']:>10.1f}{result['ceiling']:>17.1f}"
                f"{result['rows_per_s'] / result['ceiling']:>8.0%}{result['peak_rss_mib']:>14.0f}"
            )
        counts = sorted(predicted)
        if len(counts) > 1:
            print(
                f"peak RSS {counts[-1]} / {counts[0]} rows: "
                f"{predicted[counts[-1]]['peak_rss_mib'] / predicted[counts[0]]['peak_rss_mib']:.2f}x (goal <= 1.2x)"
            )
    return 0


def load_score(folder: Path, runtime: str):
    """score.py imported and initialised on ``folder``, one module object per runtime (it keeps globals)."""
    os.environ["AZUREML_MODEL_DIR"] = str(folder)
    spec = importlib.util.spec_from_file_location(
        f"score_{runtime.replace('-', '_')}", Path(__file__).resolve().parents[1] / "finetune" / "serve" / "score.py"
    )
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    score.init()
    return score


def evaluate(scores: dict, test_file: Path) -> dict:
    import numpy as np
    import pandas as pd

    from finetune.selection.metrics import classification_metrics

    test = pd.read_csv(test_file, dtype=str, keep_default_na=False)
    result = {}
    for runtime, score in scores.items():
        labels = score._scorer.labels
        proba = np.concatenate(
            [score._scorer.predict_proba(test.text[i : i + 512].tolist()) for i in range(0, len(test), 512)]
        )
        result[runtime] = classification_metrics(np.array([labels.index(label) for label in test.label]), proba)
    return result


def bare_forward_rate(scorer, texts: list[str], tokenizer) -> float:
    """Rows/s of the runtime's forward alone over pre-tokenized batches of 32 in file order."""
    import numpy as np

    batches = [
        {
            name: np.ascontiguousarray(array)
            for name, array in tokenizer(
                texts[i : i + 32], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np"
            ).items()
        }
        for i in range(0, len(texts), 32)
    ]
    scorer.forward(batches[0])
    started = time.perf_counter()
    for batch in batches:
        scorer.forward(batch)
    return len(texts) / (time.perf_counter() - started)


PREDICT_CHILD = """
import json, resource, sys, time
from finetune.predict import predict_file
from pathlib import Path
result = predict_file(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), progress=False)
result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def run_predict(model_dir: Path, texts: list[str], rows: int, scratch: Path, threads: int) -> dict:
    """``predict_file`` over ``rows`` replicated reviews in a child process: rows/s and its peak RSS."""
    import subprocess

    source = scratch / f"reviews-{rows}.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for index in range(rows):
            writer.writerow([f"r{index}", texts[index % len(texts)]])
    env = {
        **os.environ,
        "FINETUNE_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_CHILD, str(model_dir), str(source), str(scratch / f"scored-{rows}.csv")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt")


def weight_copies(root: Path) -> str:
    """Bytes of weight files under ``root`` (a hard-linked file counts once), in units of one fp32 copy."""
    seen, by_folder = set(), {}
    # The registry first: a deployment's hard links to it are then reported as the registry's copy.
    for path in sorted(Path(root).rglob("*"), key=lambda p: ("mlartifacts" not in p.parts, p)):
        if not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
            continue
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        top = path.relative_to(root).parts
        key = "/".join(top[:3]) if top[0] != "mlartifacts" else "mlartifacts (registry)"
        by_folder[key] = by_folder.get(key, 0) + stat.st_size
    fp32 = max((p.stat().st_size for p in Path(root).rglob("*.safetensors")), default=0)
    if not fp32:
        return f"no safetensors weights under {root}"
    lines = [f"{folder}: {size / 2**20:.1f} MiB = {size / fp32:.2f} copies" for folder, size in by_folder.items()]
    return "\n".join(
        lines
        + [
            f"total: {sum(by_folder.values()) / fp32:.2f} copies of the fp32 weights "
            f"({fp32 / 2**20:.1f} MiB each); hard links counted once"
        ]
    )


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
