"""score.py: the AML entry-script contract, in process through azmlinfsrv's own Flask app and directly."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import json
import logging
import sys

import numpy as np
import pytest

from finetune.serve import SCORE_SCRIPT
from test_serve_support import LABELS, TEXTS, make_automl_candidate, make_hf_candidate, request, score_alone


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir, tmp_path_factory):
    # One level below the model dir, as AML mounts a registered folder model.
    root = tmp_path_factory.mktemp("hf-registered")
    make_hf_candidate(tiny_model_dir, root / "model", registered={"name": "automotive-sentiment", "version": 7})
    return root


@pytest.fixture(scope="module")
def automl_model(tmp_path_factory):
    return make_automl_candidate(tmp_path_factory.mktemp("automl"))


@pytest.fixture
def server_app(monkeypatch, tmp_path):
    """A factory of azmlinfsrv Flask apps for score.py over a model dir, with the process restored afterwards.

    Loading the server's config runs logging.config.dictConfig (which disables every logger it does not
    name) and its blueprint replaces builtins.print; other tests in this process must not inherit that.
    """
    saved_print, saved_path = builtins.print, list(sys.path)
    saved = {
        name: (logger.disabled, logger.level, list(logger.handlers), logger.propagate)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    saved_root = (logging.root.level, list(logging.root.handlers))

    def make(model_dir, **env):
        monkeypatch.setenv("AZUREML_ENTRY_SCRIPT", str(SCORE_SCRIPT))
        monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
        monkeypatch.setenv("AML_APP_ROOT", str(tmp_path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        from azureml_inference_server_http.server import aml_blueprint, config, create_app

        # The server reads its settings once, at import; a new app over another model needs them re-read.
        importlib.reload(config)
        importlib.reload(aml_blueprint)
        return create_app.create()

    yield make
    builtins.print = saved_print
    sys.path[:] = saved_path
    for name, logger in logging.Logger.manager.loggerDict.items():
        if not isinstance(logger, logging.Logger):
            continue
        logger.disabled, logger.level, handlers, logger.propagate = saved.get(name, (False, logging.NOTSET, [], True))
        logger.handlers[:] = handlers
    logging.root.level, logging.root.handlers[:] = saved_root[0], saved_root[1]


def load_score(monkeypatch, model_dir, **env):
    """score.py imported and initialised on its own, as the benchmark uses it."""
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("score_under_test", SCORE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


def assert_well_formed(body: dict, count: int) -> None:
    assert len(body["predictions"]) == count
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == set(LABELS)
        assert prediction["label"] == max(prediction["probabilities"], key=prediction["probabilities"].get)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_hf_candidate_through_the_inference_server(server_app, hf_model):
    app = server_app(hf_model)
    # An undecorated run() gets the body as a JSON string, which is why score.py parses (and limits) it itself.
    assert type(app.azml_blueprint.user_script.input_parser).__name__ == "JsonStringInput"
    client = app.test_client()
    assert client.get("/").status_code == 200
    response = client.post("/score", json=request(3))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_well_formed(body, 3)
    assert body["model"] == {"name": "automotive-sentiment", "version": "7"}


def test_automl_candidate_through_the_inference_server(server_app, automl_model):
    client = server_app(automl_model, FINETUNE_MODEL_NAME="env-name", FINETUNE_MODEL_VERSION="3").test_client()
    response = client.post("/score", data=json.dumps(request(4)), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_well_formed(body, 4)
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative", "positive", "negative"]
    assert body["model"] == {"name": "env-name", "version": "3"}


BAD_REQUESTS = [
    (b"{not json", "request body is not JSON"),
    (b"[1, 2]", 'a JSON object with a "data" list'),
    (b'{"rows": [{"text": "a"}]}', 'a JSON object with a "data" list'),
    (b'{"data": "a review"}', '"data" must be a list'),
    (b'{"data": []}', '"data" is empty'),
    (json.dumps(request(4)).encode(), '"data" has 4 items; the limit is 3'),
    (b'{"data": [{"text": "fine"}, {"txt": "typo"}]}', 'data[1] must be an object with a string "text"'),
    (b'{"data": [{"text": 5}]}', 'data[0] must be an object with a string "text"'),
    (b'{"data": ["bare string"]}', 'data[0] must be an object with a string "text"'),
    (json.dumps({"data": [{"text": "x" * 600}]}).encode(), "bytes; the limit is 500"),
]


def test_bad_requests_get_400_naming_the_problem(server_app, automl_model):
    client = server_app(automl_model, FINETUNE_MAX_ITEMS="3", FINETUNE_MAX_BODY_BYTES="500").test_client()
    for body, message in BAD_REQUESTS:
        response = client.post("/score", data=body, content_type="application/json")
        assert response.status_code == 400, (body, response.get_data(as_text=True))
        assert response.is_json and list(response.get_json()) == ["error"]
        assert message in response.get_json()["error"], body
    # The server keeps serving after every one of them.
    assert client.post("/score", json=request(2)).status_code == 200


def test_chunked_length_sorted_batches_match_single_texts(monkeypatch, hf_model):
    score = load_score(monkeypatch, hf_model, FINETUNE_MAX_BATCH="2")
    texts = [TEXTS[1] * 3, TEXTS[2], TEXTS[0] * 2, TEXTS[4], TEXTS[3]]
    batched = score.run(json.dumps({"data": [{"text": t} for t in texts]}))["predictions"]
    for text, prediction in zip(texts, batched):
        single = score.run({"data": [{"text": text}]})["predictions"][0]
        for label in LABELS:
            assert prediction["probabilities"][label] == pytest.approx(single["probabilities"][label], abs=1e-5)


def test_chunks_respect_the_row_and_token_budgets(monkeypatch, hf_model):
    score = load_score(monkeypatch, hf_model, FINETUNE_MAX_BATCH="4", FINETUNE_CHUNK_TOKENS="100")
    scorer = score._scorer
    lengths = np.array([50, 3, 120, 10, 10, 10, 10, 10, 30, 7])
    chunks = scorer.chunks(lengths)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))  # every row once
    for chunk in chunks:
        padded, real = len(chunk) * lengths[chunk].max(), lengths[chunk].sum()
        assert len(chunk) <= 4 and (len(chunk) == 1 or (padded <= 100 and padded <= score.MAX_PADDING * real))
    unequal = np.array([100, 20])
    assert [unequal[chunk].tolist() for chunk in scorer.chunks(unequal)] == [[20], [100]]  # apart: less padding
    assert [lengths[chunk].tolist() for chunk in chunks][-1] == [120]  # too long for company: alone
    assert scorer.chunks(np.array([], dtype=int)) == []
    # The same texts give the same probabilities under any budget.
    texts = [TEXTS[1] * 3, TEXTS[2], TEXTS[0] * 2, TEXTS[4], TEXTS[3]]
    small = scorer.predict_proba(texts)
    scorer.chunk_tokens, scorer.max_batch = 10_000, 32
    assert np.allclose(small, scorer.predict_proba(texts), atol=1e-5)


def test_request_texts_are_logged_only_when_asked(monkeypatch, automl_model, caplog):
    secret = "my neighbour Jane Doe recommended it"
    caplog.set_level(logging.DEBUG)
    load_score(monkeypatch, automl_model).run({"data": [{"text": secret}]})
    assert "scored 1 texts" in caplog.text and secret not in caplog.text
    load_score(monkeypatch, automl_model, FINETUNE_LOG_REQUESTS="1").run({"data": [{"text": secret}]})
    assert secret in caplog.text


def test_init_finds_exactly_one_candidate_and_checks_labels(monkeypatch, tmp_path, hf_model, automl_model):
    score = load_score(monkeypatch, automl_model)
    assert score.find_candidate(hf_model) == hf_model / "model"
    with pytest.raises(FileNotFoundError, match="no candidate.json"):
        score.find_candidate(tmp_path)
    for name in ("a", "b"):
        make_automl_candidate(tmp_path / "two" / name)
    with pytest.raises(ValueError, match="several candidates"):
        score.find_candidate(tmp_path / "two")
    wrong = hf_model / "model" / "candidate.json"
    original = wrong.read_text()
    wrong.write_text(json.dumps({"family": "hf", "labels": ["a", "b", "c"]}))
    try:
        with pytest.raises(ValueError, match="2 outputs but candidate.json lists 3 labels"):
            load_score(monkeypatch, hf_model)
    finally:
        wrong.write_text(original)


@pytest.mark.slow  # a subprocess that loads the serving stack
def test_score_runs_without_the_finetune_package(hf_model):
    """On AML only score.py travels: it must not import finetune."""
    assert score_alone(hf_model, "finetune")["predictions"][0]["label"] in LABELS


def test_hostile_bodies_are_bad_requests_not_crashes(server_app, automl_model):
    client = server_app(automl_model).test_client()
    for body, message in [
        (b"[" * 5000 + b"]" * 5000, "nests JSON too deeply"),
        (b'{"data": ' + b"[" * 5000, "nests JSON too deeply"),
        (b'{"data": [{"text": "a\\ud800b"}]}', "unpaired surrogate"),
    ]:
        response = client.post("/score", data=body, content_type="application/json")
        assert response.status_code == 400 and message in response.get_json()["error"], body[:40]
    assert client.post("/score", json=request(2)).status_code == 200


def with_decision(folder, decision: dict):
    """The candidate folder's candidate.json with ``decision`` added (as the select stage writes it)."""
    path = folder / "candidate.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "decision": decision}))


@pytest.mark.parametrize("family", ["hf", "automl"])
def test_run_applies_the_shipped_threshold_and_keeps_the_probabilities(monkeypatch, tmp_path, tiny_model_dir, family):
    folder = (
        make_hf_candidate(tiny_model_dir, tmp_path / "hf")
        if family == "hf"
        else make_automl_candidate(tmp_path / "automl")
    )
    body = {"data": [{"text": text} for text in TEXTS]}
    plain = [p["probabilities"]["positive"] for p in load_score(monkeypatch, folder).run(body)["predictions"]]
    # A threshold between the texts' positive probabilities, far from 0.5: argmax and the rule disagree.
    ordered = sorted(plain)
    threshold = (ordered[1] + ordered[2]) / 2
    with_decision(folder, {"rule": "threshold", "positive_label": "positive", "threshold": threshold})
    decided = load_score(monkeypatch, folder).run(json.dumps(body))["predictions"]
    assert [p["label"] for p in decided] == ["positive" if p >= threshold else "negative" for p in plain]
    assert sum(p >= threshold for p in plain) == len(TEXTS) - 2
    assert any((p >= threshold) != (p > 0.5) for p in plain), "the threshold must change some label"
    assert [p["probabilities"]["positive"] for p in decided] == plain, "the rule changes labels, never probabilities"


def test_decide_rules():
    import numpy as np

    from finetune.serve.score import decide

    proba = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    labels = ["a", "b", "c"]
    assert decide(proba, labels, None).tolist() == [0, 0, 2]
    weights = {"rule": "class_weights", "weights": {"a": 0.2, "b": 1.0, "c": 1.0}}
    assert decide(proba, labels, weights).tolist() == [1, 2, 2]
    binary = np.array([[0.8, 0.2], [0.3, 0.7]])
    # The positive label is named, so a candidate listing it first is decided the same way.
    rule = {"rule": "threshold", "positive_label": "yes", "threshold": 0.25}
    assert decide(binary, ["no", "yes"], rule).tolist() == [0, 1]
    assert decide(binary[:, ::-1], ["yes", "no"], rule).tolist() == [1, 0]
    assert decide(np.array([[0.78, 0.22]]), ["no", "yes"], rule).tolist() == [0]
    assert decide(np.array([[0.74, 0.26]]), ["no", "yes"], rule).tolist() == [1]
    with pytest.raises(ValueError, match="unknown decision rule"):
        decide(binary, ["no", "yes"], {"rule": "vote"})


def test_init_refuses_a_rule_it_cannot_apply(monkeypatch, tmp_path):
    folder = make_automl_candidate(tmp_path / "automl")
    with_decision(folder, {"rule": "threshold", "positive_label": "maybe", "threshold": 0.3})
    with pytest.raises(ValueError, match="maybe"):
        load_score(monkeypatch, folder)
