"""The data stage (finetune/data/) against docs/contracts.md "Prepared data"; offline, seconds."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune import data as data_stage
from finetune.config.schema import DatasetConfig
from finetune.data import PreparedData, prepare
from finetune.data.download import cached_path
from finetune.data.labels import clean_text
from finetune.data.sources import check_source, source_url
from finetune.errors import UserError

SAMPLE_NAME = "reviews_Musical_Instruments_5.sample.json.gz"
FIVE_CORE_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mcauley_5core_sample" / SAMPLE_NAME
needs_five_core = pytest.mark.skipif(
    not FIVE_CORE_SAMPLE.exists(),
    reason=f"5-core sample not found at {FIVE_CORE_SAMPLE} (shared/ is expected beside the clone)",
)


def bundled(**changes) -> DatasetConfig:
    settings = {"source": "bundled", "text_column": "review_body", "rating_column": "star_rating"}
    return DatasetConfig(**{**settings, **changes})


def five_core(**changes) -> DatasetConfig:
    settings = {
        "name": "amazon_5core",
        "source": "amazon_5core",
        "category": "Automotive",
        "text_column": "reviewText",
        "rating_column": "overall",
    }
    return DatasetConfig(**{**settings, **changes})


def read_split(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundled_prepared(tmp_path_factory) -> PreparedData:
    return prepare(bundled(), tmp_path_factory.mktemp("bundled") / "data")


# ---------------------------------------------------------------------------------------------- bundled


def test_bundled_counts_files_and_contract(bundled_prepared):
    prepared = bundled_prepared
    summary = prepared.to_dict()
    assert list(summary) == ["source", "raw_sha256", "task", "labels", "rows_raw", "rows_labelled", "split", "splits"]
    assert summary["task"] == "single_label" and summary["split"] == "stratified"
    assert summary["labels"] == ["negative", "positive"]
    assert summary["rows_raw"] == 2804 and summary["rows_labelled"] == 2610
    bundled_csv = Path(data_stage.__file__).parent.parent / "data_files" / "automotive_reviews.csv"
    assert summary["raw_sha256"] == sha256(bundled_csv)
    totals = {"negative": 0, "positive": 0}
    for name in ("train", "val", "test"):
        split = summary["splits"][name]
        assert list(split) == ["path", "rows", "sha256", "class_counts"]
        path = Path(split["path"])
        assert path == prepared.path(name) and path.name == f"{name}.csv"
        assert path.read_bytes().startswith(b"text,label\n")
        rows = read_split(path)
        assert len(rows) == split["rows"] and split["sha256"] == sha256(path)
        assert {label: sum(r["label"] == label for r in rows) for label in prepared.labels} == split["class_counts"]
        assert all(r["text"] and r["text"] == " ".join(r["text"].split()) for r in rows)
        for label, count in split["class_counts"].items():
            totals[label] += count
    assert totals == {"positive": 2280, "negative": 330}
    out_dir = prepared.directory
    assert out_dir.name == "data" and prepared.labels_path.parent == out_dir
    assert json.loads(prepared.labels_path.read_text()) == ["negative", "positive"]
    assert json.loads((out_dir / "data.json").read_text()) == summary
    assert sorted(p.name for p in out_dir.iterdir()) == ["data.json", "labels.json", "test.csv", "train.csv", "val.csv"]
    assert [p.name for p in out_dir.parent.iterdir()] == ["data"], "no staging folder left beside out_dir"


def test_bundled_split_is_stratified(bundled_prepared):
    splits = bundled_prepared.to_dict()["splits"]
    for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = splits[name]["class_counts"]
        assert splits[name]["rows"] == pytest.approx(2610 * fraction, abs=2)
        assert counts["negative"] == pytest.approx(330 * fraction, abs=1)
        assert counts["positive"] == pytest.approx(2280 * fraction, abs=1)


def test_load_rebuilds_and_detects_edits(bundled_prepared, tmp_path):
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(bundled_prepared.train_path.parent, copy)
    loaded = PreparedData.load(copy)
    assert loaded.train_path == copy / "train.csv" and loaded.labels == bundled_prepared.labels
    expected = bundled_prepared.to_dict()
    for name in ("train", "val", "test"):
        expected["splits"][name]["path"] = str(copy / f"{name}.csv")
    assert loaded.to_dict() == expected
    with open(copy / "val.csv", "a", encoding="utf-8") as handle:
        handle.write("extra row,positive\n")
    with pytest.raises(UserError, match="val.csv: changed since it was prepared"):
        PreparedData.load(copy)
    with pytest.raises(UserError, match="data.json missing"):
        PreparedData.load(tmp_path / "nothing")


def test_same_seed_same_bytes_other_seed_differs(bundled_prepared, tmp_path):
    again = prepare(bundled(), tmp_path / "again")
    other = prepare(bundled(seed=1), tmp_path / "other")
    for name in ("train", "val", "test"):
        assert again.path(name).read_bytes() == bundled_prepared.path(name).read_bytes()
        assert again.splits[name]["sha256"] == bundled_prepared.splits[name]["sha256"]
        assert other.splits[name]["sha256"] != bundled_prepared.splits[name]["sha256"]
    assert other.splits["train"]["class_counts"] == bundled_prepared.splits["train"]["class_counts"]


def test_prepare_replaces_an_existing_folder(tmp_path):
    out_dir = tmp_path / "data"
    prepare(bundled(sample=100), out_dir)
    (out_dir / "stale.txt").write_text("from an earlier run")
    prepared = prepare(bundled(sample=200), out_dir)
    assert not (out_dir / "stale.txt").exists()
    assert sum(s["rows"] for s in prepared.splits.values()) == 200
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_sample_is_stratified_and_seeded(tmp_path):
    prepared = prepare(bundled(sample=200), tmp_path / "a")
    assert prepared.rows_labelled == 2610
    counts = {"negative": 0, "positive": 0}
    for split in prepared.splits.values():
        for label, count in split["class_counts"].items():
            counts[label] += count
    # 200 * 330 / 2610 = 25.3
    assert counts == {"negative": 25, "positive": 175}
    assert prepared.splits["val"]["class_counts"]["negative"] >= 1
    same = prepare(bundled(sample=200), tmp_path / "b")
    assert same.splits == prepared.splits


# ---------------------------------------------------------------------------------------------- 5-core


@needs_five_core
def test_five_core_from_local_path(tmp_path):
    prepared = prepare(five_core(path=str(FIVE_CORE_SAMPLE)), tmp_path / "data")
    summary = prepared.to_dict()
    assert summary["source"] == str(FIVE_CORE_SAMPLE.resolve())  # the data stage records resolved paths
    assert summary["raw_sha256"] == sha256(FIVE_CORE_SAMPLE)
    # 300 reviews: 279 rated 4-5, 9 rated 1-2, 12 rated 3 (dropped).
    assert summary["rows_raw"] == 300 and summary["rows_labelled"] == 288
    negatives = [s["class_counts"]["negative"] for s in summary["splits"].values()]
    assert sum(negatives) == 9 and min(negatives) >= 1


class _Server:
    """A local HTTP server: path -> (status, body, bytes actually sent); records each request path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                status, body, sent = server.routes.get(self.path, (404, b"not found", 9))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:sent])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    served = _Server()
    yield served
    served.close()


@needs_five_core
def test_download_progress_cache_and_no_second_request(server, tmp_path, capsys):
    body = FIVE_CORE_SAMPLE.read_bytes()
    server.routes["/files/" + SAMPLE_NAME] = (200, body, len(body))
    url = server.url("/files/" + SAMPLE_NAME)
    cache_dir = tmp_path / "cache"
    first = prepare(five_core(url=url, cache_dir=str(cache_dir)), tmp_path / "one")
    assert server.requests == ["/files/" + SAMPLE_NAME]
    assert f"download {SAMPLE_NAME}" in capsys.readouterr().err, "a tqdm progress bar on stderr"
    cached = cached_path(url, cache_dir)
    assert cached.name.endswith("-" + SAMPLE_NAME) and cached.read_bytes() == body
    assert [p.name for p in cache_dir.iterdir()] == [cached.name], "no temporary file left"
    assert first.source == url and first.raw_sha256 == hashlib.sha256(body).hexdigest()
    second = prepare(five_core(url=url, cache_dir=str(cache_dir)), tmp_path / "two")
    assert len(server.requests) == 1, "a cached download is never fetched again"
    assert second.splits == first.splits


@pytest.mark.parametrize("route", ["truncated", "missing"])
def test_failed_download_is_a_user_error_and_leaves_nothing(server, tmp_path, route):
    if route == "truncated":
        server.routes["/big.json.gz"] = (200, b"x" * 100_000, 1000)
    url = server.url("/big.json.gz")
    cache_dir = tmp_path / "cache"
    with pytest.raises(UserError) as raised:
        prepare(five_core(url=url, cache_dir=str(cache_dir)), tmp_path / "data")
    message = str(raised.value)
    assert f"dataset.url={url}: download of {url} failed" in message and "dataset.path=" in message
    assert ("1000 of 100000 bytes" if route == "truncated" else "404") in message
    assert "\n" not in message
    assert list(cache_dir.iterdir()) == [] and not (tmp_path / "data").exists()


def test_unreachable_host_names_the_url_and_the_local_copy_fix(tmp_path, monkeypatch):
    import socket

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/reviews_Automotive_5.json.gz"
    with pytest.raises(UserError, match=r"dataset\.url=.*download of .* failed .*set dataset\.path=<local copy>"):
        prepare(five_core(url=url, cache_dir=str(tmp_path / "cache")), tmp_path / "data")
    assert not (tmp_path / "data").exists()


@needs_five_core
def test_category_builds_the_canonical_url_and_uses_the_cache(tmp_path):
    url, setting = source_url(five_core())
    assert url == "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Automotive_5.json.gz"
    assert setting == "dataset.category=Automotive"
    assert source_url(five_core(path="local.json.gz")) is None, "a local copy wins over the category"
    cached = cached_path(url, tmp_path / "cache")
    cached.parent.mkdir()
    cached.write_bytes(FIVE_CORE_SAMPLE.read_bytes())
    prepared = prepare(five_core(cache_dir=str(tmp_path / "cache")), tmp_path / "data")
    assert prepared.source == url and prepared.rows_raw == 300


# ---------------------------------------------------------------------------------------------- file source

CLASSES = ["bad", "good", "meh"]


def labelled_rows(labels=CLASSES, per_class=20) -> list[dict]:
    return [{"text": f"review {i} of a {label} part", "label": label} for i in range(per_class) for label in labels]


def write_rows(path: Path, rows: list[dict]) -> Path:
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    if name.endswith(".csv"):
        with opener(path, "wt", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif name.endswith(".jsonl"):
        with opener(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def file_dataset(path: Path, **changes) -> DatasetConfig:
    settings = {"name": "file", "source": "file", "path": str(path), "text_column": "text", "label_column": "label"}
    return DatasetConfig(**{**settings, **changes})


@pytest.mark.parametrize(
    "name", ["reviews.csv", "reviews.csv.gz", "reviews.jsonl", "reviews.jsonl.gz", "reviews.parquet"]
)
@pytest.mark.parametrize("kind", ["strings", "ints"])
def test_file_formats_give_the_same_split(tmp_path, name, kind):
    rows = labelled_rows() if kind == "strings" else labelled_rows(labels=[2, 10, 0])
    prepared = prepare(file_dataset(write_rows(tmp_path / name, rows)), tmp_path / "data")
    # Integer classes are ordered numerically, and a CSV "10" names the same class as a JSON 10.
    assert prepared.labels == (CLASSES if kind == "strings" else ["0", "2", "10"])
    assert json.loads(prepared.labels_path.read_text()) == prepared.labels
    assert prepared.rows_raw == prepared.rows_labelled == 60
    for split, expected in (("train", 16), ("val", 2), ("test", 2)):
        assert prepared.splits[split]["class_counts"] == dict.fromkeys(prepared.labels, expected)
    reference = prepare(file_dataset(write_rows(tmp_path / f"ref-{kind}.csv", rows)), tmp_path / "ref")
    assert {s: v["sha256"] for s, v in prepared.splits.items()} == {s: v["sha256"] for s, v in reference.splits.items()}


def test_cleaning_and_dropped_rows(tmp_path):
    assert clean_text("  Great<br />fit &#34;really&#34;<BR>  &amp;\tcheap  ") == 'Great fit "really" & cheap'
    assert clean_text(None) == "" and clean_text(float("nan")) == "" and clean_text(5) == "5"
    rows = labelled_rows() + [{"text": "  <br />  ", "label": "good"}, {"text": "no label", "label": ""}]
    prepared = prepare(file_dataset(write_rows(tmp_path / "r.csv", rows)), tmp_path / "data")
    assert prepared.rows_raw == 62 and prepared.rows_labelled == 60


def test_ratings_map_to_sentiment_and_drop_neutral(tmp_path):
    rows = [{"body": f"text {i}", "stars": stars} for i, stars in enumerate([1, 2, 3, 4, 5, None, "n/a"] * 5)]
    path = write_rows(tmp_path / "r.jsonl", rows)
    prepared = prepare(
        DatasetConfig(source="file", path=str(path), text_column="body", rating_column="stars"), tmp_path / "data"
    )
    assert prepared.labels == ["negative", "positive"] and prepared.rows_raw == 35 and prepared.rows_labelled == 20


def test_python_literals_are_not_evaluated(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("{'text': __import__('os').getcwd(), 'label': 'good'}\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        prepare(file_dataset(path), tmp_path / "data")


# ---------------------------------------------------------------------------------------------- user errors


def _error_cases(tmp_path: Path) -> dict[str, tuple[DatasetConfig, list[str]]]:
    good_csv = write_rows(tmp_path / "good.csv", labelled_rows())
    one_class = write_rows(tmp_path / "one.csv", labelled_rows(labels=["good"]))
    empty_texts = write_rows(tmp_path / "empty.jsonl", [{"text": " ", "label": "a"}, {"text": "x", "label": None}])
    tiny_class = write_rows(tmp_path / "tiny.csv", labelled_rows() + [{"text": "rare one", "label": "rare"}] * 2)
    (tmp_path / "reviews.xlsx").write_bytes(b"PK")
    return {
        "missing file": (file_dataset(tmp_path / "nope.csv"), [f"dataset.path={tmp_path / 'nope.csv'}: no such file"]),
        "extension": (file_dataset(tmp_path / "reviews.xlsx"), ["dataset.path=", "unsupported file type", ".parquet"]),
        "text column": (
            file_dataset(good_csv, text_column="body"),
            ["dataset.text_column=body: no such column", "one of: text, label"],
        ),
        "label column": (
            file_dataset(good_csv, label_column="class"),
            ["dataset.label_column=class: no such column", "one of: text, label"],
        ),
        "rating column": (
            bundled(rating_column="stars"),
            ["dataset.rating_column=stars: no such column", "one of: star_rating, review_body"],
        ),
        "one class": (file_dataset(one_class), ["dataset.label_column=label: only one class ('good')", "2 or more"]),
        "nothing left": (
            file_dataset(empty_texts),
            [
                "dataset.label_column=label: no labelled rows left of 2 read",
                "1 empty text, 1 no label",
                "check dataset.text_column=text",
            ],
        ),
        "sample too large": (
            bundled(sample=5000),
            ["dataset.sample=5000: larger than the 2610 labelled rows", "dataset.sample=2610 or less"],
        ),
        "class too small": (
            file_dataset(tiny_class),
            ["dataset.label_column=label: class 'rare' has 2 rows", "add rows of it or drop the class"],
        ),
        "class too small in sample": (
            bundled(sample=10),
            ["dataset.sample=10: class 'negative' has 1 row in", "use a larger dataset.sample"],
        ),
        "both label and rating": (file_dataset(good_csv, rating_column="stars"), ["set exactly one"]),
        "file without path": (
            DatasetConfig(source="file", label_column="label"),
            ["dataset.path=None: dataset.source=file needs dataset.path=FILE"],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "extension",
        "text column",
        "label column",
        "rating column",
        "one class",
        "nothing left",
        "sample too large",
        "class too small",
        "class too small in sample",
        "both label and rating",
        "file without path",
    ],
)
def test_user_errors_name_the_key_and_fix_and_write_nothing(tmp_path, case):
    dataset, fragments = _error_cases(tmp_path)[case]
    out_dir = tmp_path / "run" / "data"
    with pytest.raises(UserError) as raised:
        prepare(dataset, out_dir)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert not out_dir.exists()
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []


# ---------------------------------------------------------------------------------------------- plan check


def test_check_source_is_a_plan_check():
    from finetune.plan.build import CHECKS

    assert check_source in CHECKS


def _check(dataset: DatasetConfig) -> list[str]:
    return check_source(SimpleNamespace(dataset=dataset))


def test_check_source_finds_problems_without_loading(tmp_path):
    rows = [{"body": "a", "grade": "x"}]
    csv_gz = write_rows(tmp_path / "r.csv.gz", rows)
    jsonl = write_rows(tmp_path / "r.jsonl", rows)
    parquet = write_rows(tmp_path / "r.parquet", rows)
    (tmp_path / "r.txt").write_text("body,grade\n")
    assert _check(DatasetConfig(source="file", path=None, label_column="label")) == [
        "dataset.path=None: dataset=file needs dataset.path=FILE (CSV, TSV, JSONL or parquet) or dataset.url=URL"
    ]
    assert _check(file_dataset(tmp_path / "none.csv")) == [f"dataset.path={tmp_path / 'none.csv'}: no such file"]
    assert "unsupported file type" in _check(file_dataset(tmp_path / "r.txt"))[0]
    assert "unsupported file type" in _check(DatasetConfig(source="file", url="http://h/x.zip", label_column="l"))[0]
    for path in (csv_gz, jsonl, parquet):
        assert _check(file_dataset(path)) == [
            f"dataset.text_column=text: no such column in {path}; set it to one of: body, grade",
            f"dataset.label_column=label: no such column in {path}; set it to one of: body, grade",
        ]
        assert _check(file_dataset(path, text_column="body", label_column="grade")) == []
    assert _check(DatasetConfig(source="file", path=str(jsonl), text_column="body", rating_column="stars")) == [
        f"dataset.rating_column=stars: no such column in {jsonl}; set it to one of: body, grade"
    ]
    assert _check(DatasetConfig(source="nowhere")) == [
        "dataset.source=nowhere: unknown; use one of bundled, amazon_5core, file"
    ]
    assert _check(bundled()) == [] and _check(five_core()) == []
    assert "needs dataset.category=NAME" in _check(five_core(category=None))[0]


@needs_five_core
def test_check_source_reads_the_first_five_core_line():
    assert _check(five_core(path=str(FIVE_CORE_SAMPLE))) == []
    problems = _check(five_core(path=str(FIVE_CORE_SAMPLE), text_column="text"))
    assert len(problems) == 1 and problems[0].startswith("dataset.text_column=text: no such column")
    assert "reviewText" in problems[0]


def test_import_stays_cheap():
    code = (
        "import sys, finetune.data; "
        "print(sorted(m for m in ('pandas', 'sklearn', 'numpy', 'pyarrow', 'tqdm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- hostile files


def test_corrupt_gzip_mid_stream_is_one_line(tmp_path):
    path = write_rows(tmp_path / "r.csv.gz", labelled_rows(per_class=400))
    blob = bytearray(path.read_bytes())
    # The header stays readable (the plan check passes); the deflate stream breaks further on.
    for offset in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="cannot read it as csv") as raised:
        prepare(file_dataset(path), tmp_path / "data")
    assert "\n" not in str(raised.value)
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(write_rows(tmp_path / "full.jsonl.gz", labelled_rows()).read_bytes()[:-40])
    with pytest.raises(UserError, match="cannot read it as jsonl"):
        prepare(file_dataset(truncated), tmp_path / "data")


def test_csv_missing_markers_are_missing_labels_not_classes(tmp_path, capsys):
    rows = labelled_rows() + [
        {"text": f"r's write.csv row {i}", "label": marker}
        for i, marker in enumerate(["NA", "NaN", "N/A", "NULL", " NA "])
    ]
    prepared = prepare(file_dataset(write_rows(tmp_path / "r.csv", rows)), tmp_path / "data")
    assert prepared.labels == CLASSES and prepared.rows_raw == 65 and prepared.rows_labelled == 60
    assert "dropped 5 of 65 rows: 5 no label" in capsys.readouterr().out


def test_csv_cells_over_128_kib_are_read_like_jsonl(tmp_path):
    long_text = "solid bracket " * 20_000  # 280 KB
    rows = labelled_rows() + [{"text": long_text, "label": "good"}]
    from_csv = prepare(file_dataset(write_rows(tmp_path / "r.csv", rows)), tmp_path / "csv")
    from_jsonl = prepare(file_dataset(write_rows(tmp_path / "r.jsonl", rows)), tmp_path / "jsonl")
    assert from_csv.rows_labelled == from_jsonl.rows_labelled == 61
    assert from_csv.splits == from_jsonl.splits


def test_json_objects_are_neither_labels_nor_texts(tmp_path):
    rows = labelled_rows() + [{"text": "nested label", "label": {"a": 1}}, {"text": ["a", "list"], "label": "good"}]
    prepared = prepare(file_dataset(write_rows(tmp_path / "r.jsonl", rows)), tmp_path / "data")
    assert prepared.labels == CLASSES and prepared.rows_labelled == 60


def test_infinite_ratings_are_dropped(tmp_path):
    rows = [{"body": f"text {i}", "stars": stars} for i, stars in enumerate(["1", "5", "inf", "-inf"] * 10)]
    path = write_rows(tmp_path / "r.csv", rows)
    prepared = prepare(
        DatasetConfig(source="file", path=str(path), text_column="body", rating_column="stars"), tmp_path / "data"
    )
    assert prepared.rows_labelled == 20


def test_a_folder_it_did_not_prepare_is_never_replaced(tmp_path):
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not prepared by finetune"):
        prepare(bundled(sample=100), mine)
    assert (mine / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("name", ["tickets.jsonl", "tickets.parquet"])
def test_list_valued_labels_with_task_single_label_get_one_clear_line(tmp_path, name):
    rows = [{"text": f"ticket {i}", "label": ["billing", "sales"] if i == 3 else ["billing"]} for i in range(10)]
    with pytest.raises(UserError) as error:
        prepare(file_dataset(write_rows(tmp_path / name, rows), task="single_label"), tmp_path / "out")
    message = str(error.value)
    assert "\n" not in message and message.startswith("dataset.label_column=label: row 1 of")
    assert "list of labels" in message and "set dataset.task=multi_label" in message
    assert not (tmp_path / "out").exists()
