"""NER benchmark: the shipped answers of a candidate on raw test text, scored by exact (start, end, type) match.

Each test sentence is sent to the NER entry script's answer function as raw text (its tokens joined by single
spaces), exactly as an endpoint caller would; the gold entities are the character spans of the gold tags in
that text. Candidates: the CRF baseline (fitted here, c1/c2 chosen on val) and any model folders given with
``--model`` (e.g. the registered version of ``python -m finetune dataset=file dataset.task=ner ...``).

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_ner.py --data ../shared/data/wnut17 \
        --splits train.conll dev.conll test.conll [--model outputs/<run>/select/...] [--no-crf]

Figures go to stdout as a markdown table and to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from finetune.data.ner import entity_types, read_ner_file, tag_names, write_jsonl
from finetune.serve.ner_score import answer, load_tagger
from finetune.tasks.ner_crf import GRID, run_crf
from finetune.tasks.ner_metrics import span_metrics


def text_and_spans(tokens: list, tags: list) -> tuple:
    """The tokens joined by spaces, and the gold entities as (start, end, type) character spans of that text."""
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    spans, current = [], None
    for index, tag in enumerate(tags + ["O"]):
        if current is not None and not (tag.startswith("I-") and tag[2:] == current[2]):
            spans.append((starts[current[0]], starts[current[1]] + len(tokens[current[1]]), current[2]))
            current = None
        if tag.startswith("B-"):
            current = [index, index, tag[2:]]
        elif current is not None:
            current[1] = index
    return " ".join(tokens), spans


def score(folder: Path, test: list, batch: int = 16) -> dict:
    tagger = load_tagger(folder)
    texts, gold = zip(*(text_and_spans(s.tokens, s.tags) for s in test))
    started = time.time()
    predicted = []
    for first in range(0, len(texts), batch):
        items = [{"text": text} for text in texts[first : first + batch]]
        predicted += [[(e["start"], e["end"], e["label"]) for e in p["entities"]] for p in answer(tagger, items)]
    seconds = time.time() - started
    return {**span_metrics(gold, predicted), "predict_s": round(seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument(
        "--splits", nargs=3, default=["train.conll", "dev.conll", "test.conll"], metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument("--model", action="append", default=[], type=Path, help="a candidate folder to score")
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument(
        "--grid",
        nargs="+",
        metavar="C1:C2",
        help="the CRF's (c1, c2) pairs to choose from on val (default: the candidate's 3 x 3 grid)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_ner.json"))
    args = parser.parse_args(argv)
    splits = {name: read_ner_file(args.data / file)[0] for name, file in zip(("train", "val", "test"), args.splits)}
    rows = {}
    if not args.no_crf:
        with tempfile.TemporaryDirectory() as tmp:
            for name, sentences in splits.items():
                (Path(tmp) / f"{name}.jsonl").write_bytes(write_jsonl(sentences))
            labels = tag_names(entity_types(t for s in splits["train"] for t in s.tags))
            started = time.time()
            grid = [tuple(float(v) for v in pair.split(":")) for pair in args.grid] if args.grid else GRID
            candidate = run_crf(tmp, labels, Path(tmp) / "crf", grid)
            fit_s = time.time() - started
            rows["crf"] = {
                **score(Path(candidate["path"]), splits["test"]),
                "fit_s": round(fit_s, 1),
                "params": candidate["params"],
            }
            print(f"crf: {json.dumps(rows['crf'])}", flush=True)
    for folder in args.model:
        rows[str(folder)] = score(folder, splits["test"])
        print(f"{folder}: {json.dumps(rows[str(folder)])}", flush=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| candidate | entity F1 | P | R | predict s |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(
            f"| {name} | {row['f1_entity']:.3f} | {row['precision_entity']:.3f} | {row['recall_entity']:.3f} "
            f"| {row['predict_s']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
