"""The data stage: load a source, clean the text, label it, split it, and record hashes.

``prepare(dataset, out_dir)`` turns one :class:`~finetune.config.DatasetConfig` into the files described
in docs/contracts.md ("Prepared data") and returns a :class:`PreparedData` whose ``to_dict()`` is the
``data`` section of summary.json.

Why it is built the way it is:

- Sources are read with the standard library (``csv``, ``json.loads`` one line at a time) and pyarrow for
  parquet, keeping only the two columns that matter. JSON is never ``eval``-ed: downloaded text is data.
  Values keep their Python type until labelling, so an int label 1 and a CSV label "1" both become "1".
- Downloads land in ``dataset.cache_dir`` under a name derived from the URL, via a temporary file in the
  same folder and ``os.replace``: an interrupted download never looks cached, and a cached one is never
  fetched again (the 5-core files are large and the host is slow).
- The split is computed here rather than with scikit-learn: one permutation from numpy's legacy
  ``RandomState`` (whose stream numpy guarantees across versions) drives both ``dataset.sample`` and the
  split, so the same input and seed give byte-identical split files locally and on Azure ML, and each
  class is split on its own so every class is in every split by construction, or a UserError says why not.
- Output is written to a sibling staging folder and renamed into place, so a failure leaves no
  half-prepared folder that a later stage (or a resumed run) could mistake for a good one.
- Only the standard library (and the config schema) is imported at module level: plan validation imports
  :func:`check_source` and must stay fast; numpy, pyarrow and tqdm load inside the functions that use them.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import html
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from finetune.config import DatasetConfig
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan import RunPlan

SOURCES = ("bundled", "amazon_5core", "file")
SPLITS = ("train", "val", "test")
SENTIMENT_LABELS = ["negative", "positive"]
BUNDLED_FILE = "automotive_reviews.csv"
FIVE_CORE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz"
# The 5-core files name JSON-lines content `.json`, so `.json` is read as JSON lines as well.
FORMATS = {"csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "parquet": "parquet"}
SUPPORTED = ".csv, .jsonl/.json (one JSON object a line) or .parquet; .gz is allowed for csv and jsonl"
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_CHUNK = 1 << 20
# What R's write.csv, pandas and spreadsheets write for a missing value. CSV has no null, so a label cell
# holding one of these is a missing label (the row is dropped and counted), never a class named "NA".
CSV_MISSING = frozenset({"NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "<NA>", "#N/A",
                         "#NA"})


# ---------------------------------------------------------------------------------------------- result


@dataclass
class PreparedData:
    train_path: Path
    val_path: Path
    test_path: Path
    labels_path: Path
    labels: List[str]
    source: str
    raw_sha256: str
    rows_raw: int
    rows_labelled: int
    # split name -> {"rows", "sha256", "class_counts"}; the path lives in the *_path fields.
    splits: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        """The prepared folder: the split files, labels.json and data.json (the launchers pass it on)."""
        return self.train_path.parent

    def path(self, split: str) -> Path:
        return getattr(self, f"{split}_path")

    def to_dict(self) -> dict:
        """The ``data`` section of summary.json (docs/contracts.md)."""
        return {
            "source": self.source,
            "raw_sha256": self.raw_sha256,
            "labels": list(self.labels),
            "rows_raw": self.rows_raw,
            "rows_labelled": self.rows_labelled,
            "splits": {name: {"path": str(self.path(name)), **self.splits[name]} for name in SPLITS},
        }

    @classmethod
    def load(cls, out_dir: Path | str) -> "PreparedData":
        """Rebuild the result of an earlier ``prepare`` from its folder (later stages, resumed runs).

        Paths are taken from where the folder is now, so a moved or downloaded copy still loads; split files
        are re-hashed because training on a silently edited split would make the run irreproducible.
        """
        out_dir = Path(out_dir).expanduser().resolve()
        try:
            data = json.loads((out_dir / "data.json").read_text(encoding="utf-8"))
            prepared = cls(
                train_path=out_dir / "train.csv",
                val_path=out_dir / "val.csv",
                test_path=out_dir / "test.csv",
                labels_path=out_dir / "labels.json",
                labels=data["labels"],
                source=data["source"],
                raw_sha256=data["raw_sha256"],
                rows_raw=data["rows_raw"],
                rows_labelled=data["rows_labelled"],
                splits={name: {k: v for k, v in data["splits"][name].items() if k != "path"} for name in SPLITS},
            )
        except FileNotFoundError:
            raise UserError(f"{out_dir}: no prepared data there (data.json missing); run the data stage again") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{out_dir}/data.json: unreadable ({type(error).__name__}: {error}); delete {out_dir} to "
                            "prepare the data again") from None
        for name in SPLITS:
            path = prepared.path(name)
            actual = sha256_file(path) if path.exists() else "missing"
            if actual != prepared.splits[name]["sha256"]:
                raise UserError(f"{path}: changed since it was prepared (sha256 {actual}, recorded "
                                f"{prepared.splits[name]['sha256']}); delete {out_dir} to prepare the data again")
        return prepared


# ---------------------------------------------------------------------------------------------- prepare


def prepare(dataset: DatasetConfig, out_dir: Path | str) -> PreparedData:
    """Load, clean, label, sample and split ``dataset`` into ``out_dir`` (replaced as a whole)."""
    out_dir = Path(out_dir).expanduser().resolve()
    if dataset.source not in SOURCES:
        raise UserError(f"dataset.source={dataset.source}: unknown; use one of {', '.join(SOURCES)}")
    if bool(dataset.label_column) == bool(dataset.rating_column):
        raise UserError(f"dataset.label_column={dataset.label_column}, dataset.rating_column={dataset.rating_column}: "
                        "set exactly one (labels as-is, or ratings mapped to sentiment)")
    if dataset.sample is not None and dataset.sample < 1:
        raise UserError(f"dataset.sample={dataset.sample}: must be a positive number of rows (or null for all)")

    with _local_source(dataset) as (path, fmt, source):
        texts, values, rows_raw = _read(path, fmt, dataset, source)
        raw_sha256 = sha256_file(path)
    labels, label_ids, kept_texts = _label(texts, values, dataset, source)
    assignment = _assign_splits(label_ids, labels, dataset)

    files: Dict[str, bytes] = {}
    splits: Dict[str, Dict[str, Any]] = {}
    for split_index, name in enumerate(SPLITS):
        rows = [(kept_texts[i], labels[label_ids[i]]) for i in assignment if assignment[i] == split_index]
        files[f"{name}.csv"] = _csv_bytes(rows)
        counts = {label: 0 for label in labels}
        for _, label in rows:
            counts[label] += 1
        splits[name] = {"rows": len(rows), "sha256": hashlib.sha256(files[f"{name}.csv"]).hexdigest(),
                        "class_counts": counts}
    prepared = PreparedData(
        train_path=out_dir / "train.csv",
        val_path=out_dir / "val.csv",
        test_path=out_dir / "test.csv",
        labels_path=out_dir / "labels.json",
        labels=labels,
        source=source,
        raw_sha256=raw_sha256,
        rows_raw=rows_raw,
        rows_labelled=len(label_ids),
        splits=splits,
    )
    files["labels.json"] = (json.dumps(labels) + "\n").encode("utf-8")
    files["data.json"] = (json.dumps(prepared.to_dict(), indent=2) + "\n").encode("utf-8")
    _write_folder(out_dir, files)
    return prepared


def clean_text(value: Any) -> str:
    """The reference cleaning: ``<br />`` to a space, HTML entities unescaped, whitespace collapsed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = value if isinstance(value, str) else str(value)
    return " ".join(html.unescape(_BR.sub(" ", text)).split())


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- sources


def file_format(name: str) -> Optional[str]:
    """csv | jsonl | parquet from a file name (``.gz`` allowed for csv and jsonl), or None if unsupported."""
    lower = name.lower()
    gzipped = lower.endswith(".gz")
    if gzipped:
        lower = lower[:-3]
    fmt = FORMATS.get(lower.rsplit(".", 1)[-1]) if "." in lower else None
    return None if fmt == "parquet" and gzipped else fmt


def source_url(dataset: DatasetConfig) -> Optional[Tuple[str, str]]:
    """(URL, the setting it came from) when the data must be downloaded; None for local data."""
    if dataset.source == "bundled" or dataset.path:
        return None
    if dataset.url:
        return dataset.url, f"dataset.url={dataset.url}"
    if dataset.source == "amazon_5core" and dataset.category:
        return FIVE_CORE_URL.format(category=dataset.category), f"dataset.category={dataset.category}"
    return None


@contextmanager
def _local_source(dataset: DatasetConfig) -> Iterator[Tuple[Path, str, str]]:
    """(local path, format, description for the summary) of the dataset's raw file."""
    if dataset.source == "bundled":
        with resources.as_file(resources.files("finetune") / "data_files" / BUNDLED_FILE) as path:
            yield path, "csv", f"bundled:finetune/data_files/{BUNDLED_FILE}"
        return
    remote = source_url(dataset)
    if remote:
        url, setting = remote
        path, key, description = download(url, dataset.cache_dir, setting), setting, url
    elif dataset.path:
        path = Path(dataset.path).expanduser().resolve()
        key, description = f"dataset.path={dataset.path}", str(path)
        if not path.is_file():
            raise UserError(f"{key}: no such file" + _not_a_file(path))
    else:
        needs = "dataset.path=FILE or dataset.url=URL" + (" or dataset.category=NAME" if dataset.source == "amazon_5core" else "")
        raise UserError(f"dataset.path=None: dataset.source={dataset.source} needs {needs}")
    if dataset.source == "amazon_5core":
        yield path, "jsonl", description
        return
    fmt = file_format(path.name)
    if fmt is None:
        raise UserError(f"{key}: unsupported file type; use {SUPPORTED}")
    yield path, fmt, description


def cached_path(url: str, cache_dir: Path | str) -> Path:
    """Where ``url`` is cached: its file name prefixed by a hash of the whole URL, so two URLs ending in the
    same name never collide and the extension (which picks the reader) is kept."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{digest}-{_url_file_name(url)}"


def _url_file_name(url: str) -> str:
    return Path(unquote(urlsplit(url).path)).name or "download"


def download(url: str, cache_dir: Path | str, setting: Optional[str] = None) -> Path:
    """The cached copy of ``url`` in ``cache_dir``, fetched once with a progress bar; ``setting`` names the
    config key the URL came from in the error message."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    setting = setting or f"dataset.url={url}"
    target = cached_path(url, cache_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        with urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            received = _copy_with_progress(response, handle, expected, _url_file_name(url))
        if expected is not None and received != expected:
            raise OSError(f"connection closed after {received} of {expected} bytes")
        os.replace(partial, target)
    except (OSError, HTTPException, ValueError) as error:
        reason = error.reason if isinstance(error, URLError) and not isinstance(error, HTTPError) else error
        raise UserError(f"{setting}: download of {url} failed ({reason}); if offline, fetch the file elsewhere and "
                        "set dataset.path=<local copy>") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _copy_with_progress(response, handle, total: Optional[int], name: str) -> int:
    from tqdm import tqdm

    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {name}") as bar:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            handle.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


# ---------------------------------------------------------------------------------------------- readers


def _value_column(dataset: DatasetConfig) -> Tuple[str, str]:
    """(setting key, column name) of the column that yields labels."""
    if dataset.label_column:
        return "label_column", dataset.label_column
    return "rating_column", dataset.rating_column


def _missing_columns(dataset: DatasetConfig, columns: List[str], where: str) -> List[str]:
    wanted = [("text_column", dataset.text_column)]
    wanted += [(key, getattr(dataset, key)) for key in ("label_column", "rating_column") if getattr(dataset, key)]
    present = ", ".join(columns) or "(none)"
    return [f"dataset.{key}={column}: no such column in {where}; set it to one of: {present}"
            for key, column in wanted if column not in columns]


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    """Text from a plain or gzip file, told apart by content: a saved 5-core file may have been gunzipped."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise join the first header.
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        yield handle


def _read(path: Path, fmt: str, dataset: DatasetConfig, source: str) -> Tuple[list, list, int]:
    """(texts, label or rating values, rows read) with values as the source typed them."""
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    try:
        return readers[fmt](path, dataset, source)
    except UnicodeDecodeError as error:
        raise UserError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except (OSError, EOFError, csv.Error, zlib.error) as error:
        # zlib.error: a gzip file corrupted mid-stream (a bad header is gzip.BadGzipFile, an OSError).
        raise UserError(f"{source}: cannot read it as {fmt} ({type(error).__name__}: {error})") from None


def _read_csv(path: Path, dataset: DatasetConfig, source: str) -> Tuple[list, list, int]:
    _, value_column = _value_column(dataset)
    _allow_large_csv_fields()
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        problems = _missing_columns(dataset, header, source)
        if problems:
            raise UserError(problems[0])
        text_index, value_index = header.index(dataset.text_column), header.index(value_column)
        texts, values = [], []
        for row in reader:
            if not row:
                continue
            texts.append(row[text_index] if text_index < len(row) else None)
            value = row[value_index] if value_index < len(row) else ""
            values.append(None if value.strip() in CSV_MISSING or not value.strip() else value)
    return texts, values, len(texts)


def _allow_large_csv_fields() -> None:
    """The csv module refuses fields over 128 KiB; a long review is text like any other (JSONL takes it)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than Py_ssize_t (Windows)
            limit //= 2


def _read_jsonl(path: Path, dataset: DatasetConfig, source: str) -> Tuple[list, list, int]:
    _, value_column = _value_column(dataset)
    texts, values, columns = [], [], {}
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{source}: line {number} is not JSON ({error.msg}); the file must hold one JSON "
                                "object a line") from None
            if not isinstance(record, dict):
                raise UserError(f"{source}: line {number} is a JSON {type(record).__name__}, not an object; the file "
                                "must hold one JSON object a line")
            columns.update(dict.fromkeys(record))
            texts.append(record.get(dataset.text_column))
            values.append(record.get(value_column))
    problems = _missing_columns(dataset, list(columns), source)
    if problems and texts:
        raise UserError(problems[0])
    return texts, values, len(texts)


def _read_parquet(path: Path, dataset: DatasetConfig, source: str) -> Tuple[list, list, int]:
    import pyarrow
    import pyarrow.parquet as pq

    _, value_column = _value_column(dataset)
    try:
        problems = _missing_columns(dataset, pq.read_schema(path).names, source)
        if problems:
            raise UserError(problems[0])
        table = pq.read_table(path, columns=[dataset.text_column, value_column])
    except pyarrow.ArrowException as error:
        raise UserError(f"{source}: cannot read it as parquet ({error})") from None
    return table.column(0).to_pylist(), table.column(1).to_pylist(), table.num_rows


# ---------------------------------------------------------------------------------------------- labels


def _class_name(value: Any) -> Tuple[Optional[str], str]:
    """(class name, "") or (None, why the row is dropped)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "no label"
    if isinstance(value, (dict, list)):
        return None, f"label is a JSON {'object' if isinstance(value, dict) else 'list'}"
    name = value.strip() if isinstance(value, str) else str(value)
    return (name, "") if name else (None, "no label")


def _is_int(name: str) -> bool:
    try:
        return str(int(name)) == name
    except ValueError:
        return False


def _label(texts: list, values: list, dataset: DatasetConfig, source: str) -> Tuple[List[str], List[int], List[str]]:
    """(class names in id order, label id per kept row, text per kept row); dropped rows are counted."""
    dropped: Counter = Counter()
    kept_texts, names = [], []
    for row, (raw_text, value) in enumerate(zip(texts, values), 1):
        if isinstance(value, (list, tuple)):
            # Stringified, ['billing', 'sales'] would silently become a class of its own. (A JSON object is
            # no label at all: that row is dropped and counted like an empty cell.)
            key, column = _value_column(dataset)
            raise UserError(f"dataset.{key}={column}: row {row} of {source} holds a {type(value).__name__} of labels "
                            f"({json.dumps(value, default=str)[:60]}); multi-label data is not supported yet, give "
                            "each text a single label")
        text = clean_text(raw_text) if not isinstance(raw_text, (dict, list)) else ""
        name, reason = _sentiment(value, dataset) if dataset.rating_column else _class_name(value)
        if not text or name is None:
            dropped["empty text" if not text else reason] += 1
            continue
        kept_texts.append(text)
        names.append(name)

    key, column = _value_column(dataset)
    if not names:
        why = "dropped: " + ", ".join(f"{count} {why}" for why, count in dropped.items()) if dropped else "it has no rows"
        raise UserError(f"dataset.{key}={column}: no labelled rows left of {len(texts)} read from {source} "
                        f"({why}); check dataset.text_column={dataset.text_column} and dataset.{key}")
    present = set(names)
    if len(present) < 2:
        rule = (f" (positive: rating >= {dataset.positive_min_rating:g}, negative: rating <= "
                f"{dataset.negative_max_rating:g}); adjust the thresholds or use more data"
                if dataset.rating_column else "; a classifier needs 2 or more classes, check the column")
        raise UserError(f"dataset.{key}={column}: only one class ('{names[0]}') among {len(names)} labelled rows"
                        + rule)
    if dataset.rating_column:
        labels = list(SENTIMENT_LABELS)
    else:
        # Integer classes in numeric order so that label 2 sorts before 10 and CSV "1" matches JSON 1.
        labels = sorted(present, key=int) if all(_is_int(n) for n in present) else sorted(present)
    if dropped:
        print(f"dropped {sum(dropped.values())} of {len(texts)} rows: "
              + ", ".join(f"{count} {why}" for why, count in dropped.most_common()), flush=True)
    ids = {name: index for index, name in enumerate(labels)}
    return labels, [ids[name] for name in names], kept_texts


def _sentiment(value: Any, dataset: DatasetConfig) -> Tuple[Optional[str], str]:
    """("positive" | "negative", "") or (None, why the row is dropped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "no rating"
    try:
        rating = float(value)
    except (TypeError, ValueError):
        return None, "non-numeric rating"
    if not math.isfinite(rating):
        return None, "no rating" if math.isnan(rating) else "infinite rating"
    if rating >= dataset.positive_min_rating:
        return "positive", ""
    if rating <= dataset.negative_max_rating:
        return "negative", ""
    return None, f"neutral rating ({dataset.negative_max_rating:g} < rating < {dataset.positive_min_rating:g})"


# ---------------------------------------------------------------------------------------------- split


def _assign_splits(label_ids: List[int], labels: List[str], dataset: DatasetConfig) -> Dict[int, int]:
    """Row index -> split index (0 train, 1 val, 2 test), in the seeded order the split files use."""
    import numpy as np

    total = len(label_ids)
    if dataset.sample is not None and dataset.sample > total:
        raise UserError(f"dataset.sample={dataset.sample}: larger than the {total} labelled rows; use "
                        f"dataset.sample={total} or less, or null for all rows")
    order = np.random.RandomState(dataset.seed).permutation(total).tolist()
    by_class: List[List[int]] = [[] for _ in labels]
    for row in order:
        by_class[label_ids[row]].append(row)

    wanted = total if dataset.sample is None else dataset.sample
    fractions = (dataset.val_fraction, dataset.test_fraction)
    assignment: Dict[int, int] = {}
    takes = _proportional(wanted, [len(rows) for rows in by_class])
    for label, rows, take in zip(labels, by_class, takes):
        # A class that would round to no row in val or test still gets one: metrics need every class there.
        val, test = (max(1, math.floor(take * f + 0.5)) for f in fractions)
        if take - val - test < 1:
            if dataset.sample is not None:
                setting, within, fix = f"dataset.sample={dataset.sample}", "the sample", "use a larger dataset.sample"
            else:
                key, column = _value_column(dataset)
                setting, within, fix = f"dataset.{key}={column}", "the data", "add rows of it or drop the class"
            raise UserError(f"{setting}: class '{label}' has {take} row{'' if take == 1 else 's'} in {within}, too few "
                            f"for one in each of train, val and test (it needs 3); {fix}")
        for position, row in enumerate(rows[:take]):
            assignment[row] = 0 if position < take - val - test else (1 if position < take - test else 2)
    return {row: assignment[row] for row in order if row in assignment}


def _proportional(total: int, sizes: List[int]) -> List[int]:
    """``total`` shared out in proportion to ``sizes`` (largest remainder; ties to the lower class id)."""
    whole = sum(sizes)
    shares = [total * size // whole for size in sizes]
    remainders = sorted(range(len(sizes)), key=lambda i: (-(total * sizes[i] % whole), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


# ---------------------------------------------------------------------------------------------- output


def _csv_bytes(rows: List[Tuple[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("text", "label"))
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _write_folder(out_dir: Path, files: Dict[str, bytes]) -> None:
    """Write ``files`` into a staging folder beside ``out_dir`` and swap it in whole."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "data.json").is_file():
        # Only a folder this stage prepared (it holds data.json) or an empty one is replaced; anything else
        # is the user's.
        raise UserError(f"{out_dir} exists and was not prepared by finetune (no data.json); move it away or "
                        "choose another run_name / output_root")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{token}")
    previous = out_dir.with_name(f".{out_dir.name}.old-{token}")
    staging.mkdir()
    moved_aside = False
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        if out_dir.exists():
            os.replace(out_dir, previous)
            moved_aside = True
        os.replace(staging, out_dir)
    except BaseException:
        if moved_aside:
            os.replace(previous, out_dir)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- plan check


def check_source(plan: "RunPlan") -> List[str]:
    """Problems with the dataset's source found without loading it: file, extension, column names."""
    dataset = plan.dataset
    if dataset.source not in SOURCES:
        return [f"dataset.source={dataset.source}: unknown; use one of {', '.join(SOURCES)}"]
    if dataset.source == "bundled":
        return []
    if not dataset.path:
        remote = source_url(dataset)
        if remote:
            if dataset.source == "file" and file_format(_url_file_name(remote[0])) is None:
                return [f"dataset.url={dataset.url}: unsupported file type; use {SUPPORTED}"]
            return []
        if dataset.source == "file":
            return ["dataset.path=None: dataset=file needs dataset.path=FILE (CSV, JSONL or parquet) "
                    "or dataset.url=URL"]
        return ["dataset.category=None: dataset=amazon_5core needs dataset.category=NAME, dataset.url=URL "
                "or dataset.path=FILE"]
    path = Path(dataset.path).expanduser()
    if not path.is_file():
        return [f"dataset.path={dataset.path}: no such file" + _not_a_file(path)]
    fmt = "jsonl" if dataset.source == "amazon_5core" else file_format(path.name)
    if fmt is None:
        return [f"dataset.path={dataset.path}: unsupported file type; use {SUPPORTED}"]
    try:
        columns = _header(path, fmt)
    except Exception as error:  # any unreadable file is reported, not raised: validation lists every problem
        return [f"dataset.path={dataset.path}: cannot read it as {fmt} ({' '.join(str(error).split())})"]
    return [] if columns is None else _missing_columns(dataset, columns, str(path))


def _not_a_file(path: Path) -> str:
    if path.is_dir():
        return " (it is a folder)"
    return " (it is a device or pipe, not a regular file)" if path.exists() else ""


def _header(path: Path, fmt: str) -> Optional[List[str]]:
    """Column names from the first row / first object / parquet schema; None when the file is empty."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    with _open_text(path) as handle:
        if fmt == "csv":
            return next(csv.reader(handle), None)
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"the first line is a JSON {type(record).__name__}, not an object")
                return list(record)
    return None
