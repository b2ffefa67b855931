"""Where the raw rows come from: bundled data, a 5-core download or files of the user's, read with the
standard library (``csv``, ``json.loads`` one line at a time) and pyarrow for parquet, keeping only the
columns that matter (text, label or rating, and ``split_column``). JSON is never ``eval``-ed: downloaded text
is data. Values keep their Python type until labelling, so an int label 1 and a CSV label "1" both become "1",
and a JSON list stays a list (multi-label data).

A source is one file, or with ``dataset.split_files`` a folder holding the published train/val/test files,
each read with the same options; :func:`local_source` also resolves ``dataset.label_names_file`` against the
data's folder, so a folder of data and its label names move together.

URLs are fetched once by :mod:`finetune.data.download`. :func:`check_source` finds what it can without loading.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

from finetune.config.schema import SOURCES, DatasetConfig
from finetune.data.download import CHUNK_BYTES, download, url_file_name
from finetune.data.ner import is_ner_file
from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

BUNDLED_FILE = "automotive_reviews.csv"
FIVE_CORE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz"
# The 5-core files name JSON-lines content `.json`, so `.json` is read as JSON lines as well.
FORMATS = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "parquet": "parquet"}
SUPPORTED = ".csv, .tsv, .jsonl/.json (one JSON object a line) or .parquet; .gz is allowed for csv, tsv and jsonl"
DELIMITERS = {"csv": ",", "tsv": "\t"}
SPLIT_NAMES = ("train", "val", "test")
# What R's write.csv, pandas and spreadsheets write for a missing value. CSV has no null, so a label cell
# holding one of these is a missing label (the row is dropped and counted), never a class named "NA".
CSV_MISSING = frozenset(
    {"NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "<NA>", "#N/A", "#NA"}
)


def file_format(name: str) -> Optional[str]:
    """csv | tsv | jsonl | parquet from a file name (``.gz`` allowed but for parquet), or None if unsupported."""
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


@dataclass
class RawData:
    """The local files of a source: (split name, or None without ``split_files``; path; format) each, the
    description for the summary, and the resolved ``label_names_file``."""

    files: List[Tuple[Optional[str], Path, str]]
    description: str
    names_file: Optional[Path] = None


@contextmanager
def local_source(dataset: DatasetConfig) -> Iterator[RawData]:
    """The dataset's raw files, downloaded first when they come from a URL."""
    if dataset.source == "bundled":
        name = dataset.path or BUNDLED_FILE
        with resources.as_file(resources.files("finetune") / "data_files") as folder:
            yield _raw_data(
                dataset, _bundled_path(folder, name), f"dataset.path={name}", f"bundled:finetune/data_files/{name}"
            )
        return
    remote = source_url(dataset)
    if remote:
        url, setting = remote
        if dataset.predefined_files():
            raise UserError(
                f"{setting}: dataset.split_files needs the files in a local folder; download them and "
                "set dataset.path=FOLDER"
            )
        # A relative label_names_file is the user's, not beside the download in the cache.
        yield _raw_data(dataset, download(url, dataset.cache_dir, setting), setting, url, names_folder=Path.cwd())
    elif dataset.path:
        path = Path(dataset.path).expanduser().resolve()
        yield _raw_data(dataset, path, f"dataset.path={dataset.path}", str(path))
    else:
        needs = "dataset.path=FILE or dataset.url=URL" + (
            " or dataset.category=NAME" if dataset.source == "amazon_5core" else ""
        )
        raise UserError(f"dataset.path=None: dataset.source={dataset.source} needs {needs}")


def _bundled_path(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.exists() or name in ("", "."):
        shipped = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix != ".md"))
        raise UserError(f"dataset.path={name}: not in the bundled data (finetune/data_files); use one of: {shipped}")
    return path


def _raw_data(
    dataset: DatasetConfig, path: Path, key: str, description: str, names_folder: Optional[Path] = None
) -> RawData:
    """The files of ``path`` (a file, or the folder of ``split_files``), each found and of a known format."""
    if dataset.predefined_files():
        if not path.is_dir():
            raise UserError(
                f"{key}: dataset.split_files needs dataset.path to be the folder holding them"
                + (" (it is a file)" if path.exists() else " (no such folder)")
            )
        files = []
        for split in SPLIT_NAMES:
            name = dataset.predefined_files()[split]
            file, setting = path / Path(name).expanduser(), f"dataset.split_files.{split}={name}"
            if not file.is_file():
                raise UserError(f"{setting}: no such file in {path}" + _not_a_file(file))
            files.append((split, file, _format(dataset, file, setting)))
    else:
        if not path.is_file():
            raise UserError(f"{key}: no such file" + _not_a_file(path))
        files = [(None, path, _format(dataset, path, key))]
    names_file = None
    if dataset.label_names_file:
        # Relative to the data, not to the working directory: a folder of data carries its label names.
        folder = names_folder or (path if path.is_dir() else path.parent)
        names_file = folder / Path(dataset.label_names_file).expanduser()
        if not names_file.is_file():
            raise UserError(
                f"dataset.label_names_file={dataset.label_names_file}: no such file ({names_file}); name "
                f"a text file with one label name a line, absolute or relative to {folder}"
            )
    return RawData(
        files,
        description + (f" ({', '.join(f'{s}: {p.name}' for s, p, _ in files)})" if dataset.predefined_files() else ""),
        names_file,
    )


def _format(dataset: DatasetConfig, path: Path, key: str) -> str:
    fmt = "jsonl" if dataset.source == "amazon_5core" else file_format(path.name)
    if dataset.task == "ner" or (dataset.task == "auto" and dataset.source != "amazon_5core" and is_ner_file(path)):
        return "ner"  # read by finetune.data.ner_prepare, whatever the suffix
    if fmt is None:
        raise UserError(f"{key}: unsupported file type; use {SUPPORTED}")
    if dataset.column_names and fmt not in DELIMITERS:
        raise UserError(
            f"dataset.column_names={dataset.column_names}: only for headerless CSV / TSV, and {path.name} "
            f"is {fmt} (its columns are named); set dataset.column_names=null"
        )
    return fmt


def label_setting(dataset: DatasetConfig) -> Tuple[str, str]:
    """(setting key, column name) of the column that yields labels."""
    if dataset.label_column:
        return "label_column", dataset.label_column
    return "rating_column", dataset.rating_column


def _missing_columns(dataset: DatasetConfig, columns: List[str], where: str) -> List[str]:
    wanted = [("text_column", dataset.text_column)]
    wanted += [
        (key, getattr(dataset, key))
        for key in ("label_column", "rating_column", "split_column")
        if getattr(dataset, key)
    ]
    present = ", ".join(columns) or "(none)"
    return [
        f"dataset.{key}={column}: no such column in {where}; set it to one of: {present}"
        for key, column in wanted
        if column not in columns
    ]


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    """Text from a plain or gzip file, told apart by content: a saved 5-core file may have been gunzipped."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise join the first header.
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        yield handle


def read_source(path: Path, fmt: str, dataset: DatasetConfig, source: str) -> Tuple[list, list, Optional[list], int]:
    """(texts, label or rating values, ``split_column`` values or None, rows read), values as the source typed
    them."""
    wanted = [dataset.text_column, label_setting(dataset)[1]] + ([dataset.split_column] if dataset.split_column else [])
    try:
        if fmt in DELIMITERS:
            columns = _read_csv(path, dataset, source, wanted, DELIMITERS[fmt])
        else:
            columns = (_read_jsonl if fmt == "jsonl" else _read_parquet)(path, dataset, source, wanted)
    except UnicodeDecodeError as error:
        raise UserError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except (OSError, EOFError, csv.Error, zlib.error) as error:
        # zlib.error: a gzip file corrupted mid-stream (a bad header is gzip.BadGzipFile, an OSError).
        raise UserError(f"{source}: cannot read it as {fmt} ({type(error).__name__}: {error})") from None
    return columns[0], columns[1], columns[2] if dataset.split_column else None, len(columns[0])


def _read_csv(path: Path, dataset: DatasetConfig, source: str, wanted: List[str], delimiter: str) -> List[list]:
    _allow_large_csv_fields()
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = list(dataset.column_names) if dataset.column_names else next(reader, [])
        problems = _missing_columns(dataset, header, source)
        if problems:
            raise UserError(problems[0])
        indexes = [header.index(column) for column in wanted]
        columns: List[list] = [[] for _ in wanted]
        for row in reader:
            if not row:
                continue
            columns[0].append(row[indexes[0]] if indexes[0] < len(row) else None)
            for index, values in zip(indexes[1:], columns[1:]):
                value = row[index] if index < len(row) else ""
                values.append(None if value.strip() in CSV_MISSING or not value.strip() else value)
    return columns


def _allow_large_csv_fields() -> None:
    """The csv module refuses fields over 128 KiB; a long review is text like any other (JSONL takes it)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than Py_ssize_t (Windows)
            limit //= 2


def _read_jsonl(path: Path, dataset: DatasetConfig, source: str, wanted: List[str]) -> List[list]:
    values: List[list] = [[] for _ in wanted]
    columns: Dict[str, None] = {}
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{source}: line {number} is not JSON ({error.msg}); the file must hold one JSON object a line"
                ) from None
            if not isinstance(record, dict):
                raise UserError(
                    f"{source}: line {number} is a JSON {type(record).__name__}, not an object; the file "
                    "must hold one JSON object a line"
                )
            columns.update(dict.fromkeys(record))
            for column, found in zip(wanted, values):
                found.append(record.get(column))
    problems = _missing_columns(dataset, list(columns), source)
    if problems and values[0]:
        raise UserError(problems[0])
    return values


def _read_parquet(path: Path, dataset: DatasetConfig, source: str, wanted: List[str]) -> List[list]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        problems = _missing_columns(dataset, pq.read_schema(path).names, source)
        if problems:
            raise UserError(problems[0])
        table = pq.read_table(path, columns=wanted)
    except pyarrow.ArrowException as error:
        raise UserError(f"{source}: cannot read it as parquet ({error})") from None
    return [table.column(index).to_pylist() for index in range(len(wanted))]


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(plan: "RunPlan") -> List[str]:
    """Problems with the dataset's source found without loading it: files, extensions, column names."""
    dataset = plan.dataset
    if dataset.source not in SOURCES:
        return [f"dataset.source={dataset.source}: unknown; use one of {', '.join(SOURCES)}"]
    if dataset.predefined_files() and sorted(dataset.predefined_files()) != sorted(SPLIT_NAMES):
        return []  # check_split names the keys; the files cannot be found without them
    try:
        if dataset.source == "bundled":
            with resources.as_file(resources.files("finetune") / "data_files") as folder:
                name = dataset.path or BUNDLED_FILE
                raw = _raw_data(dataset, _bundled_path(folder, name), f"dataset.path={name}", name)
        elif dataset.path:
            raw = _raw_data(dataset, Path(dataset.path).expanduser(), f"dataset.path={dataset.path}", dataset.path)
        else:
            return _remote_problems(dataset)
    except UserError as error:
        return [str(error)]
    problems: List[str] = []
    for split, path, fmt in raw.files:
        try:
            # NER files have no columns; their lines are checked when the data stage reads them.
            columns = None if fmt == "ner" else _header(path, fmt, dataset)
        except Exception as error:  # any unreadable file is reported, not raised: validation lists every problem
            key = (
                f"dataset.split_files.{split}={dataset.predefined_files()[split]}"
                if split
                else f"dataset.path={dataset.path}"
            )
            problems.append(f"{key}: cannot read it as {fmt} ({' '.join(str(error).split())})")
            continue
        problems += [] if columns is None else _missing_columns(dataset, columns, str(path))
    return problems


def _remote_problems(dataset: DatasetConfig) -> List[str]:
    remote = source_url(dataset)
    if remote:
        if dataset.predefined_files():
            return [
                f"{remote[1]}: dataset.split_files needs the files in a local folder; download them and set "
                "dataset.path=FOLDER"
            ]
        if dataset.source == "file" and file_format(url_file_name(remote[0])) is None:
            return [f"dataset.url={dataset.url}: unsupported file type; use {SUPPORTED}"]
        return []
    if dataset.source == "file" and dataset.predefined_files():
        return ["dataset.path=None: dataset.split_files needs dataset.path=FOLDER, the folder holding them"]
    if dataset.source == "file":
        return [
            "dataset.path=None: dataset=file needs dataset.path=FILE (CSV, TSV, JSONL or parquet) or dataset.url=URL"
        ]
    return [
        "dataset.category=None: dataset=amazon_5core needs dataset.category=NAME, dataset.url=URL or dataset.path=FILE"
    ]


def _not_a_file(path: Path) -> str:
    if path.is_dir():
        return " (it is a folder)"
    return " (it is a device or pipe, not a regular file)" if path.exists() else ""


def _header(path: Path, fmt: str, dataset: DatasetConfig) -> Optional[List[str]]:
    """Column names from ``column_names`` / the first row / first object / parquet schema; None when the file
    is empty."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if fmt in DELIMITERS and dataset.column_names:
        return list(dataset.column_names)
    with _open_text(path) as handle:
        if fmt in DELIMITERS:
            return next(csv.reader(handle, delimiter=DELIMITERS[fmt]), None)
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"the first line is a JSON {type(record).__name__}, not an object")
                return list(record)
    return None


def is_ner(dataset: DatasetConfig) -> bool:
    """``dataset.task=ner``, or ``auto`` over files that all read as NER data (:func:`finetune.data.ner.is_ner_file`)."""
    if dataset.task != "auto":
        return dataset.task == "ner"
    if dataset.rating_column or dataset.label_separator or dataset.source == "amazon_5core":
        return False
    try:
        with local_source(dataset) as raw:
            return all(fmt == "ner" for _, _, fmt in raw.files)
    except (UserError, OSError):
        return False
