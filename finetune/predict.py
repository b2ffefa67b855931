"""``python -m finetune.predict``: score a file of texts with a registered model or a model folder.

    python -m finetune.predict --model amazon_automotive-sentiment@production --input reviews.csv.gz --output scored.parquet

CSV, JSONL and parquet in and out, chosen by extension (``.gz`` works for CSV and JSONL). The output has
the input's id column (``--id-column``, default ``id`` when the input has one), ``label`` and
``probability_<label>`` per class, rows in input order. A multi-label model writes ``labels`` instead of
``label``: a list per row (in CSV the list literal ``['anger', 'joy']``, the format of prepared splits); an NER model
writes ``entities``, the endpoint's entity objects as a JSON list per row. The input is read in chunks of ``--chunk-rows``
(memory stays flat in the number of rows); inside a chunk the scorer sorts texts by length and runs
forward batches of ``--batch-size``. Scoring is score.py's own (same runtime, truncation and decision
rule as the online endpoint). The output appears only when every row is scored (written to
``<output>.partial``, then renamed). A bad file or model ends with one line on stderr and exit code 2.

On Azure ML the same command runs as a job over a data asset: :mod:`finetune.launch.azureml.predict`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from finetune.errors import UserError
from finetune.registry import model_registry as registry
from finetune.serve import ner_score
from finetune.serve.entry_scripts import NER_SCORE_SCRIPT, entry_script
from finetune.serve.score import decided_labels, find_candidate, load_scorer

if TYPE_CHECKING:
    import pandas

# What a truncated, corrupt or mislabelled file raises while being read (pandas' and pyarrow's parse errors
# are ValueErrors; gzip raises OSError, EOFError or zlib.error).
READ_ERRORS = (OSError, ValueError, EOFError, zlib.error)
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    found = FORMATS.get(suffixes[-1] if suffixes else "")
    if found is None or (found == "parquet" and path.suffix.lower() == ".gz"):
        raise UserError(f"{path}: unknown file type; use .csv, .jsonl or .parquet (.csv.gz and .jsonl.gz work too)")
    return found


def resolve_model(spec: str, tracking_uri: str) -> Path:
    """A model folder from ``DIR``, ``name@alias``, ``name/version`` or ``models:/`` followed by either."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _candidate_folder(folder)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).is_file():
        raise UserError(
            f"--model {spec}: not a folder, and there is no model registry at {tracking_uri} (set --tracking-uri)"
        )
    reference = spec[len("models:/") :] if spec.startswith("models:/") else spec
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = registry.alias_version(name, alias, tracking_uri)
    elif "/" in reference and reference.rsplit("/", 1)[1].isdigit():
        name, version = reference.rsplit("/", 1)
    else:
        raise UserError(f"--model {spec}: not a folder, and not a registered model as name@alias or name/version")
    return _candidate_folder(Path(registry.resolve(name, version, tracking_uri).path))


def _candidate_folder(folder: Path) -> Path:
    try:
        return find_candidate(folder)
    except (FileNotFoundError, ValueError) as problem:
        raise UserError(f"--model {folder}: not a model folder ({problem})") from None


def count_rows(path: Path, kind: str) -> int:
    """Rows in the file, read as a stream (the progress bar's total)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with _open_text(path) as handle:
        if kind == "jsonl":
            return sum(1 for line in handle if line.strip())
        import csv

        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8", newline="")
        if path.suffix.lower() == ".gz"
        else open(path, encoding="utf-8", newline="")
    )


def read_chunks(path: Path, kind: str, columns: list[str], chunk_rows: int) -> Iterator["pandas.DataFrame"]:
    """The file's ``columns`` in chunks of at most ``chunk_rows`` rows."""
    import pandas as pd

    if kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pandas()
    elif kind == "csv":
        yield from pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, chunksize=chunk_rows)
    else:
        for chunk in pd.read_json(path, lines=True, dtype=False, chunksize=chunk_rows):
            missing = [column for column in columns if column not in chunk.columns]
            if missing:
                raise UserError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, chunk.columns))})")
            yield chunk[columns]


def file_columns(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with _open_text(path) as handle:
        if kind == "csv":
            import csv

            return next(csv.reader(handle), [])
        first = next((line for line in handle if line.strip()), "{}")
        return list(json.loads(first))


class Writer:
    """Appends scored chunks to ``<output>.partial`` in the output's format; :meth:`close` renames it."""

    def __init__(self, path: Path):
        self.path, self.kind = path, file_format(path)
        self.partial = path.with_name(path.name + ".partial")
        self.handle, self.parquet = None, None

    def write(self, table) -> None:
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            batch = pa.Table.from_pandas(table, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.partial, batch.schema)
            self.parquet.write_table(batch)
            return
        first = self.handle is None
        if first:
            self.handle = (
                gzip.open(self.partial, "wt", encoding="utf-8", newline="")
                if self.path.suffix.lower() == ".gz"
                else open(self.partial, "w", encoding="utf-8", newline="")
            )
        if self.kind == "csv":
            table.to_csv(self.handle, header=first, index=False)
        elif not table.empty:
            self.handle.write(table.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n")

    def close(self, ok: bool) -> None:
        for closable in (self.handle, self.parquet):
            if closable is not None:
                closable.close()
        if ok:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def predict_file(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    *,
    text_column: str = "text",
    id_column: Optional[str] = None,
    chunk_rows: int = 1024,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Score ``input_path`` into ``output_path``; returns ``{"rows", "output", "model", "seconds"}``."""
    import time

    import numpy as np
    from tqdm import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise UserError(f"--input {input_path}: no such file")
    kind = file_format(input_path)
    file_format(output_path)
    if output_path.resolve() == input_path.resolve():
        raise UserError(f"--output {output_path} is the input file; choose another name")
    try:
        available = file_columns(input_path, kind)
        total = count_rows(input_path, kind)
    except READ_ERRORS as problem:
        raise UserError(
            f"--input {input_path}: cannot read it as {kind} ({type(problem).__name__}: {problem})"
        ) from None
    if text_column not in available:
        raise UserError(
            f"--input {input_path}: no text column {text_column!r} (columns: {', '.join(available)}); "
            "name it with --text-column"
        )
    if id_column is None:
        id_column = "id" if "id" in available else None
    elif id_column not in available:
        raise UserError(f"--input {input_path}: no id column {id_column!r} (columns: {', '.join(available)})")
    ner = entry_script(model_dir) == NER_SCORE_SCRIPT
    try:
        scorer = ner_score.load_tagger(model_dir) if ner else load_scorer(model_dir, max_batch=batch_size)
    except (OSError, ValueError, KeyError) as problem:
        raise UserError(f"--model {model_dir}: cannot load it ({type(problem).__name__}: {problem})") from None
    output_path.parent.mkdir(parents=True, exist_ok=True)
    writer = Writer(output_path)
    columns = [text_column] + ([id_column] if id_column and id_column != text_column else [])
    started, rows, ok = time.perf_counter(), 0, False
    bar = tqdm(total=total, unit="row", desc="predict", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    try:
        for chunk in read_chunks(input_path, kind, columns, chunk_rows):
            texts = chunk[text_column]
            missing = texts.isna().to_numpy() | ~texts.map(lambda t: isinstance(t, str)).to_numpy()
            if missing.any():
                row = rows + int(np.argmax(missing)) + 1
                raise UserError(f"--input {input_path}: row {row} has no text in column {text_column!r}")
            import pandas as pd

            table = pd.DataFrame({id_column: chunk[id_column].to_numpy()} if id_column else {})
            if ner:
                # The endpoint's entity objects, as one JSON list per row (every output format can hold a string).
                answers = ner_score.answer(scorer, [{"text": text} for text in texts.tolist()])
                table["entities"] = [json.dumps(a["entities"], ensure_ascii=False) for a in answers]
            else:
                proba = scorer.predict_proba(texts.tolist())
                table["labels" if scorer.task == "multi_label" else "label"] = decided_labels(
                    proba, scorer.labels, scorer.decision
                )
                for column, label in enumerate(scorer.labels):
                    table[f"probability_{label}"] = proba[:, column].astype(np.float64)
            writer.write(table)
            rows += len(chunk)
            bar.update(len(chunk))
        ok = True
    except READ_ERRORS as problem:
        if isinstance(problem, UserError):
            raise
        raise UserError(
            f"--input {input_path}: cannot read it as {kind} after row {rows} "
            f"({type(problem).__name__}: {str(problem)[:200]})"
        ) from None
    finally:
        bar.close()
        writer.close(ok)
    return {
        "rows": rows,
        "output": str(output_path),
        "model": str(model_dir),
        "seconds": round(time.perf_counter() - started, 3),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.predict",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python -m finetune.predict --model amazon_automotive-sentiment@production --input r.csv "
        "--output scored.csv\n  python -m finetune.predict --model amazon_automotive-sentiment/3 --input r.jsonl.gz "
        "--output s.parquet\n  python -m finetune.predict --model outputs/run/train/model --input r.parquet "
        "--output s.jsonl --id-column review_id",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a model folder, name@alias or name/version of a registered model (also as models:/...)",
    )
    parser.add_argument("--input", required=True, type=Path, help="CSV / JSONL / parquet file (.gz for CSV/JSONL)")
    parser.add_argument("--output", required=True, type=Path, help="output file; its extension sets the format")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", help="passed through to the output (default: 'id' when the input has it)")
    parser.add_argument(
        "--tracking-uri",
        default=DEFAULT_TRACKING_URI,
        help=f"MLflow registry of name@alias / name/version (default {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument("--chunk-rows", type=int, default=1024, help="rows read and scored at a time (default 1024)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--threads", type=int, help="runtime threads (default: the CPUs this process may use)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.threads:
        os.environ["FINETUNE_NUM_THREADS"] = str(args.threads)
    try:
        if args.chunk_rows < 1 or args.batch_size < 1:
            raise UserError("--chunk-rows and --batch-size must be at least 1")
        model_dir = resolve_model(args.model, args.tracking_uri)
        result = predict_file(
            model_dir,
            args.input,
            args.output,
            text_column=args.text_column,
            id_column=args.id_column,
            chunk_rows=args.chunk_rows,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    print(f"scored {result['rows']} rows in {result['seconds']:.1f} s -> {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
