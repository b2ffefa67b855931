"""NER modelling pieces: the entity metric, long-sentence windows and label alignment, the CRF candidate and the
endpoint's answers with character offsets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from finetune.data.ner import read_ner_file, read_prepared, write_jsonl
from finetune.serve import ner_score
from finetune.serve.ner_score import IGNORED, encode_sentence, entities_from_tags, owners, plan_windows, repair_tags
from finetune.tasks.ner_metrics import entity_metrics, error_kinds, span_metrics, wrong_sentences

SAMPLE = Path(__file__).resolve().parent.parent / "finetune" / "data_files" / "wnut17_sample"


def random_tags(rng: random.Random, length: int) -> list:
    return [rng.choice(["O", "O", "B-A", "I-A", "B-B", "I-B"]) for _ in range(length)]


def test_entity_f1_equals_seqeval_strict_iob2_on_random_tag_rows():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    for _ in range(50):
        gold = [random_tags(rng, rng.randint(1, 12)) for _ in range(6)]
        predicted = [random_tags(rng, len(row)) for row in gold]
        ours = entity_metrics(gold, predicted)
        assert ours["f1_entity"] == pytest.approx(f1_score(gold, predicted, mode="strict", scheme=IOB2))
        assert ours["precision_entity"] == pytest.approx(precision_score(gold, predicted, mode="strict", scheme=IOB2))
        assert ours["recall_entity"] == pytest.approx(recall_score(gold, predicted, mode="strict", scheme=IOB2))


def test_per_type_figures_and_span_scoring_count_exact_matches():
    gold = [["B-A", "I-A", "O", "B-B"]]
    predicted = [["B-A", "I-A", "O", "B-A"]]
    metrics = entity_metrics(gold, predicted)
    assert (metrics["precision.A"], metrics["recall.A"], metrics["f1.B"]) == (0.5, 1.0, 0.0)
    assert metrics["support.A"] == 1 and metrics["support.B"] == 1
    spans = span_metrics([[(0, 5, "A"), (9, 12, "B")]], [[(0, 5, "A"), (9, 12, "A")]])
    assert spans["f1_entity"] == pytest.approx(metrics["f1_entity"])


def test_error_kinds_tell_boundary_from_type_errors():
    gold = [["B-A", "I-A", "O", "B-B", "O", "O", "B-A", "O"]]
    predicted = [["B-A", "O", "O", "B-A", "O", "B-B", "O", "O"]]
    assert error_kinds(gold, predicted) == {
        "type": 1,
        "boundary": 1,
        "boundary_and_type": 0,
        "spurious": 1,
        "missed": 1,
    }
    example = wrong_sentences([["a", "b", "c", "d", "e", "f", "g", "h"]], gold, predicted)[0]
    assert example["gold"] == [("a b", "A"), ("d", "B"), ("g", "A")]


def test_windows_cover_every_word_within_budget_and_share_at_most_the_stride():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 5) for _ in range(rng.randint(1, 60))]
        budget, stride = rng.randint(5, 20), rng.randint(0, 8)
        windows = plan_windows(lengths, budget, stride)
        assert windows[0][0] == 0 and windows[-1][1] == len(lengths)
        for (start, end), (next_start, next_end) in zip(windows, windows[1:]):
            assert start < next_start <= end < next_end
            assert sum(lengths[next_start:end]) <= stride
        for start, end in windows:
            assert end - start == 1 or sum(lengths[start:end]) <= budget
        owner = owners(windows, len(lengths))
        assert all(windows[owner[w]][0] <= w < windows[owner[w]][1] for w in range(len(lengths)))


def test_labels_sit_on_each_words_first_sub_token_in_every_window(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = ("the wipers fit my truck perfectly and the headlights are bright " * 8).split()
    tag_ids = list(range(len(words)))
    windows = encode_sentence(tokenizer, words, max_length=24, stride=6, tag_ids=tag_ids)
    assert len(windows) > 3
    labelled = set()
    for window in windows:
        assert len(window["input_ids"]) <= 24
        previous = None
        for word, label in zip(window["word_ids"], window["labels"]):
            first = word is not None and word != previous
            assert label == (tag_ids[word] if first else IGNORED)
            labelled.add(word)
            previous = word
    assert labelled - {None} == set(range(len(words)))  # never silently cut


def test_repair_and_entities_use_character_offsets_of_the_text():
    text = "Met  Ada Lovelace in London"
    words = ner_score.split_words(text)
    tags = repair_tags(["O", "I-person", "I-person", "O", "B-location"])
    found = entities_from_tags(words, tags, [0.9, 0.8, 0.6, 0.9, 0.7], text)
    assert found == [
        {"text": "Ada Lovelace", "label": "person", "start": 5, "end": 17, "score": 0.7},
        {"text": "London", "label": "location", "start": 21, "end": 27, "score": 0.7},
    ]


def make_token_classifier(tiny_model_dir: Path, folder: Path, labels: list) -> Path:
    """The tiny BERT with a random token-classification head, saved as an NER candidate."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / "candidate.json").write_text(
        json.dumps({"family": "hf", "task": "ner", "labels": labels, "max_length": 16, "stride": 4})
    )
    return folder


def test_transformer_answers_every_word_of_a_long_text_with_offsets_into_it(tiny_model_dir, tmp_path):
    labels = ["O", "B-product", "I-product"]
    tagger = ner_score.load_tagger(make_token_classifier(tiny_model_dir, tmp_path / "m", labels))
    text = "  Bought   new wipers, they fit!  " * 6
    words = tagger.words(text)
    assert all(text[start:end] == word for word, start, end in words)
    ((tags, scores),) = tagger.tag([[w for w, _, _ in words]])
    assert len(tags) == len(words) and all(0 < s <= 1 for s in scores)
    (answered,) = ner_score.answer(tagger, [{"text": text}])
    for entity in answered["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"] and entity["label"] == "product"
    (tokens_answer,) = ner_score.answer(tagger, [{"tokens": ["new", "wipers"]}])
    assert len(tokens_answer["tags"]) == 2 and set(tokens_answer["tags"]) <= set(labels)
    # A word the tokenizer drops entirely (zero-width space) gets O instead of breaking the request.
    (dropped,) = ner_score.answer(tagger, [{"tokens": ["new", "\u200b", "wipers"]}])
    assert dropped["tags"][1] == "O" and dropped["scores"][1] == 1.0 and len(dropped["tags"]) == 3


@pytest.mark.slow  # a CRF grid on val, then real servers
def test_crf_candidate_chooses_c1_c2_on_val_and_serves_entities(tmp_path):
    from finetune.data.ner import entity_types, tag_names
    from finetune.tasks.ner_crf import run_crf

    splits = {
        name: read_ner_file(SAMPLE / f"{file}.conll")[0]
        for name, file in (("train", "train"), ("val", "dev"), ("test", "test"))
    }
    for name, sentences in splits.items():
        (tmp_path / f"{name}.jsonl").write_bytes(write_jsonl(sentences))
    labels = tag_names(entity_types(t for s in splits["train"] for t in s.tags))
    candidate = run_crf(tmp_path, labels, tmp_path / "crf", grid=[(0.05, 0.05), (5.0, 5.0)], max_iterations=50)
    assert {row["c1"] for row in candidate["grid"]} == {0.05, 5.0}
    assert candidate["params"]["c1"] == max(candidate["grid"], key=lambda r: r["val_f1_entity"])["c1"]
    tagger = ner_score.load_tagger(Path(candidate["path"]))
    train_text = " ".join(splits["train"][0].tokens)
    (answered,) = ner_score.answer(tagger, [{"text": train_text}])
    assert all(train_text[e["start"] : e["end"]] == e["text"] for e in answered["entities"])
    # On its own training data a CRF finds entities: a feature or tag mix-up would find none.
    tagged = tagger.tag([s.tokens for s in splits["train"][:100]])
    assert entity_metrics([s.tags for s in splits["train"][:100]], [t for t, _ in tagged])["f1_entity"] > 0.5


@pytest.mark.parametrize(
    "body, message",
    [
        ("{", "not JSON"),
        ('{"data": []}', "request must be"),
        ('{"data": [{"tokens": ["a", ""]}]}', "data[0] must be"),
        ('{"data": [{"txt": "a"}]}', "data[0] must be"),
    ],
)
def test_malformed_requests_are_named(body, message):
    with pytest.raises(ner_score.BadRequest, match=message.replace("[", r"\[")):
        ner_score.parse_request(body, 64, 1_000_000)


@pytest.mark.slow  # a real (tiny) token-classification fine-tune
def test_training_val_entity_f1_is_what_the_saved_model_scores_on_val(tmp_path, tiny_model_dir):
    """The val metric merges windows back by position: evaluation must not be reordered (group_by_length is the
    default, and transformers' length grouping also reorders evaluation)."""
    import subprocess
    import sys

    from finetune.config.schema import DatasetConfig, SplitFiles
    from finetune.data import prepare

    data = prepare(
        DatasetConfig(
            name="s",
            source="bundled",
            path="wnut17_sample",
            task="ner",
            split_files=SplitFiles("train.conll", "dev.conll", "test.conll"),
        ),
        tmp_path / "data",
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.train",
            "--train-file",
            str(data.train_path),
            "--val-file",
            str(data.val_path),
            "--labels-file",
            str(data.labels_path),
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(tmp_path / "train"),
            "--task",
            "ner",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-7",
            "--primary-metric",
            "val_f1_entity",
            "--group-by-length",
            "true",
            "--learning-check",
            "warn",
            # Scored again below in fp32: on a CPU with native bf16 an autocast evaluation of this near-random model
            # moves a tag or two, which is not what this test is about.
            "--precision",
            "fp32",
            "--progress",
            "false",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    tagger = ner_score.load_tagger(tmp_path / "train" / "model")
    val = read_prepared(data.val_path)
    tagged = [tags for tags, _ in tagger.tag([s.tokens for s in val])]
    scored = entity_metrics([s.tags for s in val], tagged)
    # An (almost) untrained head tags at random: many entities, a few right, each sentence its own.
    assert scored["f1_entity"] > 0, "a model that finds no entity cannot tell an ordered val from a shuffled one"
    assert result["val"]["f1_entity"] == pytest.approx(scored["f1_entity"])
    assert result["val"]["precision_entity"] == pytest.approx(scored["precision_entity"])


def test_a_crf_grid_its_time_budget_cuts_short_keeps_its_best_fit(tmp_path):
    """The local plan gives the CRF the AutoML stage's seconds: past them no further pair is tried, and the
    candidate is the best fit so far (no refit, no leftover files)."""
    from finetune.data.ner import entity_types, tag_names
    from finetune.tasks.ner_crf import GRID, MODEL_FILE, run_crf

    for name, file in (("train", "train"), ("val", "dev")):
        (tmp_path / f"{name}.jsonl").write_bytes(write_jsonl(read_ner_file(SAMPLE / f"{file}.conll")[0][:80]))
    labels = tag_names(entity_types(t for s in read_prepared(tmp_path / "train.jsonl") for t in s.tags))
    candidate = run_crf(tmp_path, labels, tmp_path / "crf", max_iterations=5, time_budget_s=0)
    assert len(candidate["grid"]) == 1 and candidate["grid_skipped"] == len(GRID) - 1
    assert (candidate["grid"][0]["c1"], candidate["grid"][0]["c2"]) == GRID[0]
    assert sorted(p.name for p in (tmp_path / "crf").iterdir()) == ["candidate.json", MODEL_FILE]
    assert ner_score.load_tagger(Path(candidate["path"])).tag([["a", "b"]])
