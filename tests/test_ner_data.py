"""NER readers: CoNLL, JSONL tokens + tags, JSONL spans; IOBES and stray I- handling; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data.ner import read_ner_file, spans_to_sentence, tag_names, to_iob2
from finetune.errors import UserError

SAMPLE = Path(__file__).resolve().parent.parent / "finetune" / "data_files" / "wnut17_sample"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_conll_reads_tab_and_space_columns_skips_docstart_and_takes_the_last_field(tmp_path):
    path = write(
        tmp_path,
        "a.conll",
        "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter\tB-PER\nBlackburn\tI-PER\n",
    )
    sentences, stats = read_ner_file(path)
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert stats.docstart_lines == 1 and stats.entity_counts == {"ORG": 1, "PER": 1}


def test_bundled_sample_reads_as_its_source_says():
    counts = {name: read_ner_file(SAMPLE / f"{name}.conll")[1].sentences for name in ("train", "dev", "test")}
    assert counts == {"train": 400, "dev": 100, "test": 100}


def test_iobes_is_converted_to_iob2(tmp_path):
    path = write(
        tmp_path,
        "a.jsonl",
        json.dumps(
            {"tokens": ["New", "York", "City", "is", "Paris"], "tags": ["B-LOC", "I-LOC", "E-LOC", "O", "S-LOC"]}
        )
        + "\n",
    )
    sentences, stats = read_ner_file(path)
    assert sentences[0].tags == ["B-LOC", "I-LOC", "I-LOC", "O", "B-LOC"] and stats.iobes_converted


def test_stray_inside_tags_become_outside_as_seqeval_strict_reads_them_and_are_counted():
    from seqeval.scheme import IOB2, Entities

    from finetune.data.ner import NerReadStats

    tags = ["O", "I-PER", "I-PER", "B-LOC", "I-PER", "B-X", "I-X"]
    stats = NerReadStats()
    repaired = to_iob2(tags, "x", iobes=False, stats=stats)
    assert repaired == ["O", "O", "O", "B-LOC", "O", "B-X", "I-X"]
    assert stats.stray_inside_tags == 3
    strict = lambda rows: [(e.start, e.end, e.tag) for e in Entities(rows, IOB2, suffix=False).entities[0]]  # noqa: E731
    assert strict([tags]) == strict([repaired])


def test_spans_become_words_and_tags_with_unaligned_and_overlapping_counts(tmp_path):
    records = [
        {
            "text": "I met Ada Lovelace in London.",
            "entities": [{"start": 6, "end": 18, "label": "person"}, {"start": 22, "end": 27, "label": "location"}],
        },
        {
            "text": "Visit NewYorkCity now",
            "entities": [{"start": 9, "end": 13, "label": "location"}, {"start": 6, "end": 17, "label": "location"}],
        },
    ]
    path = write(tmp_path, "spans.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    sentences, stats = read_ner_file(path)
    assert sentences[0].tokens == ["I", "met", "Ada", "Lovelace", "in", "London", "."]
    assert sentences[0].tags == ["O", "O", "B-person", "I-person", "O", "B-location", "O"]
    # "York" inside "NewYorkCity" widens to the word (unaligned); the second span overlaps it and is dropped.
    assert sentences[1].tags == ["O", "B-location", "O"]
    assert (stats.entities_unaligned, stats.entities_overlapping) == (2, 1)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bad.conll", "Peter\tB-PER\nBlackburn\n", "bad.conll line 2: malformed CoNLL line 'Blackburn'"),
        ("len.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', "len.jsonl line 1: 2 tokens but 1 tags"),
        (
            "scheme.conll",
            "x\tO\n\nPeter\tPERSON\n",
            "scheme.conll line 3: tag 'PERSON' (token 1) is not O, B-TYPE or I-TYPE",
        ),
        (
            "scheme.jsonl",
            '{"tokens": ["a"], "tags": ["E-X"]}\n{"tokens": ["a"], "tags": ["U-X"]}\n',
            "scheme.jsonl line 2: tag 'U-X' (token 1) is not O, B-TYPE or I-TYPE",
        ),
        ("empty.jsonl", '{"tokens": [], "tags": []}\n', "empty.jsonl line 1: empty sentence"),
        ("empty_text.jsonl", '{"text": "  ", "entities": []}\n', "empty_text.jsonl line 1: empty sentence"),
        (
            "outside.jsonl",
            '{"text": "short", "entities": [{"start": 2, "end": 9, "label": "x"}]}\n',
            "outside.jsonl line 1: entity span 2..9 (x) is outside its text of 5 characters",
        ),
        (
            "inverted.jsonl",
            '{"text": "short", "entities": [{"start": 3, "end": 1, "label": "x"}]}\n',
            "inverted.jsonl line 1: entity span 3..1 (x) is outside its text",
        ),
        ("nothing.conll", "\n\n", "nothing.conll: no sentences"),
    ],
)
def test_bad_input_is_one_line_naming_the_line(tmp_path, name, content, expected):
    with pytest.raises(UserError) as raised:
        read_ner_file(write(tmp_path, name, content))
    message = str(raised.value)
    assert expected in message and "\n" not in message


def test_tag_names_put_outside_first_then_begin_inside_per_sorted_type():
    assert tag_names(["person", "location"]) == ["O", "B-location", "I-location", "B-person", "I-person"]


def test_span_words_keep_their_character_offsets():
    sentence, unaligned, overlapping = spans_to_sentence("@ada: #win!", [{"start": 1, "end": 4, "label": "p"}], "x")
    assert sentence.tokens == ["@", "ada", ":", "#", "win", "!"]
    assert sentence.tags == ["O", "B-p", "O", "O", "O", "O"] and (unaligned, overlapping) == (0, 0)


def test_auto_task_recognises_conll_and_jsonl_ner_files(tmp_path):
    from finetune.config.schema import DatasetConfig
    from finetune.data.multilabel import planned_task

    spans = write(tmp_path, "spans.jsonl", json.dumps({"text": "Ada", "entities": []}) + "\n")
    rows = write(tmp_path, "rows.jsonl", json.dumps({"text": "Ada", "label": "x"}) + "\n")
    assert planned_task(DatasetConfig(source="file", path=str(SAMPLE / "train.conll"), label_column="label")) == "ner"
    assert planned_task(DatasetConfig(source="file", path=str(spans), label_column="label")) == "ner"
    assert planned_task(DatasetConfig(source="file", path=str(rows), label_column="label")) == "single_label"


def test_computed_split_puts_every_entity_type_in_train_val_and_test(tmp_path):
    from finetune.config.schema import DatasetConfig
    from finetune.data import PreparedData, prepare
    from finetune.data.ner import read_prepared

    prepared = prepare(DatasetConfig(source="file", path=str(SAMPLE / "train.conll"), task="ner"), tmp_path / "data")
    assert prepared.split == "iterative_stratification"
    assert {name: split["rows"] for name, split in prepared.splits.items()} == {"train": 320, "val": 40, "test": 40}
    for split in prepared.splits.values():
        assert all(count > 0 for count in split["class_counts"].values()), split["class_counts"]
    again = PreparedData.load(tmp_path / "data")
    assert again.task == "ner" and len(read_prepared(again.test_path)) == 40
    assert again.labels[0] == "O" and "B-person" in again.labels


def test_plan_refuses_a_classification_selection_metric_for_ner_and_an_entity_metric_for_classes():
    from finetune.config.schema import SelectConfig
    from finetune.selection.choose import check_config

    assert check_config(SelectConfig(metric="f1_entity"), "ner") == []
    assert check_config(SelectConfig(metric="auc_weighted"), "ner") == [
        "select.metric=auc_weighted: not a metric of ner data; use one of f1_entity, precision_entity, "
        "recall_entity, f1_macro_entity"
    ]
    assert "not a metric of single_label data" in check_config(SelectConfig(metric="f1_entity"), "single_label")[0]
    assert check_config(SelectConfig(metric="f1_entity"), "auto") == []
