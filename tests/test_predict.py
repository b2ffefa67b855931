"""python -m finetune.predict: file formats, id pass-through, streaming in bounded chunks, one-line errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from finetune import predict
from finetune.serve import score
from test_serve_support import LABELS, TEXTS, make_hf_candidate

ROWS = 23  # not a multiple of the chunk size: the last chunk is short


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory):
    return make_hf_candidate(tiny_model_dir, tmp_path_factory.mktemp("predict") / "model")


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "review_id": [f"r{i:03d}" for i in range(ROWS)],
            "text": [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(ROWS)],
            "stars": list(range(ROWS)),
        }
    )


def write(table: pd.DataFrame, path):
    if path.name.endswith((".csv", ".csv.gz")):
        table.to_csv(path, index=False)
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        table.to_json(path, orient="records", lines=True)
    else:
        table.to_parquet(path, index=False)
    return path


def read(path) -> pd.DataFrame:
    if path.name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path, dtype={"review_id": str})
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return pd.read_json(path, lines=True, dtype={"review_id": str})
    return pd.read_parquet(path)


@pytest.mark.parametrize(
    "source,target", [("in.csv.gz", "out.parquet"), ("in.jsonl", "out.csv"), ("in.parquet", "out.jsonl.gz")]
)
def test_every_format_in_and_out_with_ids_in_input_order(model, tmp_path, monkeypatch, source, target):
    seen = []
    original = score.HFScorer.predict_proba

    def spy(self, texts):
        seen.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(score.HFScorer, "predict_proba", spy)
    table = frame()
    result = predict.predict_file(
        model,
        write(table, tmp_path / source),
        tmp_path / target,
        id_column="review_id",
        chunk_rows=5,
        batch_size=2,
        progress=False,
    )
    out = read(tmp_path / target)
    assert result["rows"] == ROWS
    assert list(out.columns) == ["review_id", "label", *[f"probability_{label}" for label in LABELS]]
    assert out.review_id.tolist() == table.review_id.tolist()
    # Streaming: the scorer never saw more than one chunk of rows at a time.
    assert seen == [5, 5, 5, 5, 3]
    monkeypatch.setattr(score.HFScorer, "predict_proba", original)
    scorer = score.load_scorer(model)
    expected = scorer.predict_proba(table.text.tolist())
    assert np.allclose(out[[f"probability_{label}" for label in LABELS]].to_numpy(), expected, atol=1e-6)
    assert out.label.tolist() == score.decided_labels(expected, LABELS, scorer.decision)
    assert not list(tmp_path.glob("*.partial"))


def test_the_id_column_defaults_to_id_and_is_optional(model, tmp_path):
    table = frame().rename(columns={"review_id": "id"})
    predict.predict_file(model, write(table, tmp_path / "a.csv"), tmp_path / "a-out.csv", progress=False)
    assert pd.read_csv(tmp_path / "a-out.csv", dtype={"id": str}).id.tolist() == table.id.tolist()
    predict.predict_file(model, write(table[["text"]], tmp_path / "b.csv"), tmp_path / "b-out.csv", progress=False)
    assert list(pd.read_csv(tmp_path / "b-out.csv").columns) == [
        "label",
        "probability_negative",
        "probability_positive",
    ]


def bad_inputs(tmp_path):
    good = write(frame(), tmp_path / "good.csv")
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(b"text,id\nfine,1\n")[:20])
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text("\n".join(json.dumps({"id": i, "text": None if i == 2 else "ok"}) for i in range(4)) + "\n")
    return [
        (["--input", str(tmp_path / "missing.csv")], "no such file"),
        (["--input", str(write(frame(), tmp_path / "data.xlsx.csv")).replace(".csv", "")], "unknown file type"),
        (["--input", str(good), "--text-column", "body"], "no text column 'body'"),
        (["--input", str(good), "--id-column", "sku"], "no id column 'sku'"),
        (["--input", str(corrupt)], "cannot read it as csv"),
        (["--input", str(nulls)], "row 3 has no text in column 'text'"),
    ]


def test_bad_files_end_with_one_line_and_no_output(model, tmp_path, capsys):
    (tmp_path / "data.xlsx").write_text("x")
    for arguments, message in bad_inputs(tmp_path):
        output = tmp_path / "out.csv"
        code = predict.main(["--model", str(model), "--output", str(output), "--no-progress", *arguments])
        err = capsys.readouterr().err
        assert code == 2, arguments
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (arguments, err)
        assert not output.exists() and not list(tmp_path.glob("*.partial"))


def test_bad_models_end_with_one_line(tmp_path, capsys):
    data = write(frame(), tmp_path / "in.csv")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for model, message in (
        (str(tmp_path), "not a model folder"),
        ("automotive-sentiment@production", "there is no model registry at"),
    ):
        code = predict.main(
            [
                "--model",
                model,
                "--input",
                str(data),
                "--output",
                str(tmp_path / "o.csv"),
                "--tracking-uri",
                tracking,
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (model, err)
