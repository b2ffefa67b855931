"""Multi-label data, TSV / headerless files and predefined splits in the data stage (issue 15); offline, seconds."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from finetune.config.schema import DatasetConfig, SplitFiles
from finetune.data import PreparedData, prepare, read_multi_label_split, read_split, read_targets
from finetune.data.labels import check_labels
from finetune.data.sources import check_source
from finetune.data.split import check_split
from finetune.errors import UserError

NAMES = ["anger", "joy", "neutral", "surprise"]
BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "finetune" / "data_files" / "goemotions_sample"


def split_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tsv_folder(folder: Path, files: dict[str, list[tuple[str, str]]]) -> Path:
    """A GoEmotions-style folder: headerless TSV (text, comma-separated label ids, id) + labels.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(
                (text, ids, f"id{i}") for i, (text, ids) in enumerate(rows)
            )
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    return folder


def goemotions_style(path: Path, **changes) -> DatasetConfig:
    settings = dict(
        name="emotions",
        source="file",
        path=str(path),
        column_names=["text", "labels", "id"],
        text_column="text",
        label_column="labels",
        label_separator=",",
        label_names_file="labels.txt",
        split_files={"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"},
    )
    settings.update(changes)
    return DatasetConfig(**{**settings, "split_files": SplitFiles(**settings["split_files"])})


def published(tmp_path: Path, val_ids: str = "1") -> Path:
    train = [(f"train text {i}", ids) for i, ids in enumerate(["0", "1,2", "3", "0,3", "2", "1"] * 3)]
    return tsv_folder(
        tmp_path / "emotions",
        {
            "train.tsv": train,
            "dev.tsv": [('she said "wow", twice', "0,3"), ("dev two", val_ids), ("dev three", "2")],
            "test.tsv": [("test one", "1"), ("test two", "2,0")],
        },
    )


def test_goemotions_style_ids_names_file_and_predefined_split(tmp_path):
    prepared = prepare(goemotions_style(published(tmp_path)), tmp_path / "data")
    assert prepared.task == "multi_label" and prepared.split == "predefined"
    assert prepared.labels == NAMES  # the names file's order, not sorted
    assert {name: split["rows"] for name, split in prepared.splits.items()} == {"train": 18, "val": 3, "test": 2}
    val = split_rows(prepared.val_path)
    assert val == [
        {"text": 'she said "wow", twice', "label": "['anger', 'surprise']"},
        {"text": "dev two", "label": "['joy']"},
        {"text": "dev three", "label": "['neutral']"},
    ]
    assert [row["text"] for row in split_rows(prepared.train_path)] == [f"train text {i}" for i in range(18)]
    assert split_rows(prepared.test_path)[1]["label"] == "['anger', 'neutral']"  # label-id order
    assert prepared.splits["train"]["class_counts"] == {"anger": 6, "joy": 6, "neutral": 6, "surprise": 6}
    assert prepared.splits["val"]["class_counts"] == {"anger": 1, "joy": 1, "neutral": 1, "surprise": 1}
    data = json.loads((prepared.directory / "data.json").read_text())
    assert data["task"] == "multi_label" and data["split"] == "predefined" and data["rows_raw"] == 23
    loaded = PreparedData.load(prepared.directory)
    assert loaded.task == "multi_label" and loaded.split == "predefined"


def test_label_id_out_of_range_names_the_row(tmp_path):
    folder = published(tmp_path, val_ids="1,7")
    with pytest.raises(
        UserError,
        match=r"dataset.label_names_file=labels.txt: row 2 of .*dev.tsv has label '7', "
        r"not an id 0-3",
    ):
        prepare(goemotions_style(folder), tmp_path / "data")


def test_label_seen_in_val_but_never_in_train_is_an_error(tmp_path):
    folder = published(tmp_path)
    tsv_folder(folder, {"train.tsv": [(f"t{i}", "0" if i % 2 else "1") for i in range(10)]})
    with pytest.raises(UserError) as raised:
        prepare(goemotions_style(folder), tmp_path / "data")
    message = str(raised.value)
    assert message.startswith("dataset.split_files=") and "'neutral', 'surprise'" in message
    assert "never in train (predefined split)" in message and "add train rows with them" in message
    assert not (tmp_path / "data").exists()


def multi_rows(n: int = 60, rare: int = 0) -> list[dict]:
    picks = random.Random(7)
    rows = [
        {"text": f"ticket {i}", "label": sorted(picks.sample(["billing", "sales", "tech"], picks.randint(1, 2)))}
        for i in range(n)
    ]
    for i in range(rare):
        rows[i * 7]["label"] = rows[i * 7]["label"] + ["legal"]
    return rows


def test_jsonl_lists_are_detected_and_stratified_iteratively(tmp_path):
    path = write_jsonl(tmp_path / "tickets.jsonl", multi_rows())
    prepared = prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")
    assert prepared.task == "multi_label" and prepared.split == "iterative_stratification"
    assert prepared.labels == ["billing", "sales", "tech"] and prepared.rows_labelled == 60
    assert sum(split["rows"] for split in prepared.splits.values()) == 60
    for name in ("val", "test"):
        assert 4 <= prepared.splits[name]["rows"] <= 8
        assert all(count >= 1 for count in prepared.splits[name]["class_counts"].values())


@pytest.mark.parametrize("rare", [3, 4, 5])
def test_a_rare_label_is_in_every_split_and_the_split_is_seeded(tmp_path, rare):
    path = write_jsonl(tmp_path / "tickets.jsonl", multi_rows(n=200, rare=rare))
    dataset = DatasetConfig(source="file", path=str(path), label_column="label")
    first = prepare(dataset, tmp_path / "a")
    for split in first.splits.values():
        assert split["class_counts"]["legal"] >= 1
    again = prepare(dataset, tmp_path / "b")
    other = prepare(DatasetConfig(source="file", path=str(path), label_column="label", seed=1), tmp_path / "c")
    for name in ("train", "val", "test"):
        assert again.path(name).read_bytes() == first.path(name).read_bytes()
    assert any(other.splits[name]["sha256"] != first.splits[name]["sha256"] for name in ("train", "val", "test"))


def test_a_label_with_fewer_rows_than_splits_gets_a_note(tmp_path, capsys):
    path = write_jsonl(tmp_path / "tickets.jsonl", multi_rows(n=100, rare=2))
    prepared = prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")
    assert "note: label 'legal' has 2 rows, too few for one in each of train, val and test" in capsys.readouterr().out
    assert prepared.splits["train"]["class_counts"]["legal"] == 2


def test_multi_label_sample_is_drawn_then_stratified(tmp_path):
    path = write_jsonl(tmp_path / "tickets.jsonl", multi_rows(n=300, rare=5))
    dataset = DatasetConfig(source="file", path=str(path), label_column="label", sample=100)
    prepared = prepare(dataset, tmp_path / "a")
    assert sum(split["rows"] for split in prepared.splits.values()) == 100 and prepared.rows_labelled == 300
    assert prepare(dataset, tmp_path / "b").splits == prepared.splits


def test_csv_label_separator_strips_whitespace(tmp_path):
    path = tmp_path / "tickets.csv"
    lines = ["text,tags"] + [f"row {i},{' billing | sales ' if i % 3 else 'tech'}" for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    prepared = prepare(
        DatasetConfig(source="file", path=str(path), label_column="tags", label_separator="|"), tmp_path / "data"
    )
    assert prepared.task == "multi_label" and prepared.labels == ["billing", "sales", "tech"]
    assert {row["label"] for row in split_rows(prepared.train_path)} == {"['billing', 'sales']", "['tech']"}


def test_empty_label_set_is_an_error_unless_allowed(tmp_path):
    rows = multi_rows() + [{"text": "no tags at all", "label": []}]
    path = write_jsonl(tmp_path / "tickets.jsonl", rows)
    with pytest.raises(UserError) as raised:
        prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")
    message = str(raised.value)
    assert message.startswith("dataset.allow_empty_labels=false: row 61 of") and "has no labels" in message
    assert "dataset.allow_empty_labels=true" in message
    prepared = prepare(
        DatasetConfig(source="file", path=str(path), label_column="label", allow_empty_labels=True), tmp_path / "data"
    )
    assert prepared.rows_labelled == 61
    cells = [
        row["label"]
        for name in ("train", "val", "test")
        for row in split_rows(prepared.path(name))
        if row["text"] == "no tags at all"
    ]
    assert cells == ["[]"]


def test_label_values_inside_a_list_must_be_strings_or_integers(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", multi_rows() + [{"text": "odd", "label": ["billing", {"x": 1}]}])
    with pytest.raises(UserError, match=r"dataset.label_column=label: row 61 of .* only strings or integers"):
        prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")


def test_read_multi_label_split_round_trips_awkward_names(tmp_path):
    awkward = ["it's", 'say "hi"', "a, b", "plain"]
    rows = [{"text": f"text {i}", "label": [awkward[i % 4], awkward[(i + 1) % 4]]} for i in range(40)]
    prepared = prepare(
        DatasetConfig(source="file", path=str(write_jsonl(tmp_path / "t.jsonl", rows)), label_column="label"),
        tmp_path / "data",
    )
    assert prepared.labels == sorted(awkward)
    texts, targets = read_multi_label_split(prepared.train_path, prepared.labels)
    assert targets.dtype == np.uint8 and targets.shape == (len(texts), 4)
    expected = {row["text"]: row["label"] for row in rows}
    for text, hot in zip(texts, targets):
        assert sorted(name for name, bit in zip(prepared.labels, hot) if bit) == sorted(expected[text])
    same_texts, same = read_targets(prepared.train_path, prepared.labels, "multi_label")
    assert same_texts == texts and (same == targets).all()


def test_read_multi_label_split_refuses_unknown_labels_and_code(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("text,label\nfine,['joy']\nodd,['rage']\n")
    with pytest.raises(UserError, match=r"row 2 has labels \['rage'\] that are not among the prepared labels"):
        read_multi_label_split(path, NAMES)
    path.write_text("text,label\nhostile,__import__('os').getcwd()\n")
    with pytest.raises(UserError, match="row 1 has label .* not a list of label names"):
        read_multi_label_split(path, NAMES)


def test_read_targets_keeps_single_label_reading(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("text,label\ngood,joy\nbad,anger\n")
    assert read_targets(path, NAMES, "single_label") == read_split(path, NAMES) == (["good", "bad"], [1, 0])


def test_split_column_gives_a_predefined_split(tmp_path):
    values = ["Train", "train", "VALIDATION", "dev", "val", "test", "TEST", "train", "train", "train"] * 3
    rows = [{"text": f"text {i}", "label": ["x", "y", "z"][i % 3], "part": part} for i, part in enumerate(values)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    prepared = prepare(
        DatasetConfig(source="file", path=str(path), label_column="label", split_column="part"), tmp_path / "data"
    )
    assert prepared.task == "single_label" and prepared.split == "predefined"
    assert {name: split["rows"] for name, split in prepared.splits.items()} == {"train": 15, "val": 9, "test": 6}
    rows[4]["part"] = "holdout"
    write_jsonl(path, rows)
    with pytest.raises(UserError, match=r"dataset.split_column=part: row 5 of .* holds 'holdout'; use train, val"):
        prepare(
            DatasetConfig(source="file", path=str(path), label_column="label", split_column="part"), tmp_path / "data"
        )


def test_tsv_with_header_is_read_like_csv(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text("label\ttext\n" + "".join(f"{'good' if i % 2 else 'bad'}\treview, {i}\n" for i in range(40)))
    prepared = prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")
    assert prepared.task == "single_label" and prepared.split == "stratified" and prepared.labels == ["bad", "good"]
    assert split_rows(prepared.train_path)[0]["text"].startswith("review, ")


def test_sample_with_split_files_samples_each_split_in_proportion(tmp_path):
    dataset = goemotions_style(BUNDLED_SAMPLE, sample=1500)
    prepared = prepare(dataset, tmp_path / "data")
    assert {name: split["rows"] for name, split in prepared.splits.items()} == {"train": 1200, "val": 150, "test": 150}
    assert prepare(dataset, tmp_path / "again").splits == prepared.splits
    # 800 train rows happen to hold no 'relief', which 100 val rows do: said, not trained around.
    with pytest.raises(UserError, match="label 'relief' occurs in val or test but never in train .* larger dataset"):
        prepare(goemotions_style(BUNDLED_SAMPLE, sample=1000), tmp_path / "small")


def test_bundled_goemotions_sample_prepares(tmp_path):
    from omegaconf import OmegaConf

    # Typed as Hydra composes it: split_files becomes a SplitFiles.
    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "dataset" / "goemotions_sample.yaml")
    prepared = prepare(
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), config)), tmp_path / "data"
    )
    assert prepared.source.startswith("bundled:finetune/data_files/goemotions_sample")
    assert prepared.task == "multi_label" and prepared.split == "predefined" and len(prepared.labels) == 28
    assert prepared.labels[:3] == ["admiration", "amusement", "anger"] and prepared.labels[-1] == "neutral"
    assert {name: split["rows"] for name, split in prepared.splits.items()} == {"train": 4000, "val": 500, "test": 500}
    texts, targets = read_targets(prepared.test_path, prepared.labels, prepared.task)
    assert targets.shape == (500, 28) and targets.sum(axis=1).min() >= 1


def _problems(dataset: DatasetConfig) -> list[str]:
    plan = SimpleNamespace(dataset=dataset)
    return check_split(plan) + check_labels(plan) + check_source(plan)


def test_plan_checks_of_the_new_settings(tmp_path):
    folder = published(tmp_path)
    assert _problems(goemotions_style(folder)) == []
    assert (
        _problems(
            DatasetConfig(
                source="bundled",
                path="goemotions_sample",
                label_column="labels",
                column_names=["text", "labels", "id"],
                label_separator=",",
                label_names_file="labels.txt",
                split_files=SplitFiles("train.tsv", "dev.tsv", "test.tsv"),
            )
        )
        == []
    )
    problems = _problems(goemotions_style(folder, split_files={"train": "train.tsv", "val": "dev.tsv"}))
    assert problems[0].startswith("dataset.split_files={'train': 'train.tsv', 'val': 'dev.tsv'}: name a file for each")
    assert "set one of them to null" in _problems(goemotions_style(folder, split_column="part"))[0]
    assert _problems(goemotions_style(folder, task="multi")) == [
        "dataset.task=multi: unknown; use one of auto, single_label, multi_label, ner"
    ]
    assert _problems(goemotions_style(folder, label_names_file="names.txt"))[0].startswith(
        "dataset.label_names_file=names.txt: no such file"
    )
    assert _problems(
        goemotions_style(folder, split_files={"train": "train.tsv", "val": "x.tsv", "test": "test.tsv"})
    ) == [f"dataset.split_files.val=x.tsv: no such file in {folder}"]
    assert _problems(goemotions_style(folder, column_names=["text", "id"]))[0].startswith(
        "dataset.label_column=labels: no such column"
    )
    no_folder = DatasetConfig(**{**vars(goemotions_style(folder)), "path": None})
    assert "needs dataset.path=FOLDER" in _problems(no_folder)[0]
    assert (
        "dataset.split_files needs dataset.path to be the folder"
        in _problems(goemotions_style(folder / "train.tsv"))[0]
    )
    jsonl = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": ["x"]}])
    assert (
        "dataset.column_names=['text', 'label']: only for headerless CSV / TSV"
        in _problems(
            DatasetConfig(source="file", path=str(jsonl), label_column="label", column_names=["text", "label"])
        )[0]
    )
    assert (
        "use dataset.label_column instead"
        in _problems(
            DatasetConfig(source="bundled", rating_column="star_rating", text_column="review_body", task="multi_label")
        )[0]
    )
    assert _problems(DatasetConfig(source="bundled", path="nope", label_column="label"))[0].startswith(
        "dataset.path=nope: not in the bundled data (finetune/data_files); use one of: automotive_reviews.csv"
    )


def test_old_prepared_folders_load_as_single_label(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\n" + "".join(f"r {i},{'ab'[i % 2]}\n" for i in range(30)))
    prepared = prepare(DatasetConfig(source="file", path=str(path), label_column="label"), tmp_path / "data")
    data = json.loads((prepared.directory / "data.json").read_text())
    del data["task"], data["split"]
    (prepared.directory / "data.json").write_text(json.dumps(data))
    loaded = PreparedData.load(prepared.directory)
    assert loaded.task == "single_label" and loaded.split == "stratified"


def test_the_plan_decides_task_auto_from_settings_or_first_rows(tmp_path):
    from finetune.data.multilabel import planned_task

    lists = write_jsonl(tmp_path / "lists.jsonl", [{"text": "a", "tags": ["x", "y"]}, {"text": "b", "tags": ["y"]}])
    scalars = write_jsonl(tmp_path / "scalars.jsonl", [{"text": "a", "tags": "x"}, {"text": "b", "tags": "y"}])
    assert planned_task(DatasetConfig(source="file", path=str(lists), label_column="tags")) == "multi_label"
    assert planned_task(DatasetConfig(source="file", path=str(scalars), label_column="tags")) == "single_label"
    assert (
        planned_task(DatasetConfig(source="file", path=str(scalars), label_column="tags", label_separator="|"))
        == "multi_label"
    )
    assert (
        planned_task(DatasetConfig(source="file", path=str(lists), label_column="tags", task="single_label"))
        == "single_label"
    ), "a set task is kept"
    assert (
        planned_task(DatasetConfig(source="file", url="https://example.invalid/x.jsonl", label_column="tags")) == "auto"
    ), "a download is the data stage's to decide"
    assert (
        planned_task(DatasetConfig(source="file", path=str(tmp_path / "missing.jsonl"), label_column="tags")) == "auto"
    ), "a broken source is the plan check's to report"
    assert planned_task(DatasetConfig(rating_column="star_rating", text_column="review_body")) == "single_label"
