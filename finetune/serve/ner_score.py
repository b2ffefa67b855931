"""Scoring entry script of NER candidates (the AML ``init()``/``run()`` contract, as :mod:`score` for classifiers).

A registered NER version carries this file as its ``score.py``; like the classifiers' it runs where the
``finetune`` package is not installed: the standard library, numpy, the tokenizer and torch or onnxruntime (``hf``,
as ``runtime`` says), python-crfsuite (``crf``) or mlflow (``automl``: AML AutoML's NER model, in its own environment).
Training imports the window plan and the label alignment from here, so both cut long sentences the same way.

Request ``{"data": [{"text": "..."}]}`` answers ``{"predictions": [{"entities": [{"text", "label", "start",
"end", "score"}]}]}``: ``start``/``end`` are character offsets into the text sent, ``label`` the type without B-/I-,
``score`` the mean probability of the entity's word tags. Raw text is split into words by the tokenizer's own
pre-tokenizer offsets (the CRF and AutoML: :data:`WORD`), so no character is lost. An item ``{"tokens": [...]}`` is
answered ``{"tags": [...], "scores": [...]}``, one IOB2 tag per token.

Long sentences: a sentence's sub-tokens are cut at word boundaries into windows of ``max_length``; consecutive
windows share up to ``stride`` sub-tokens of context and each word takes its tags from the window where it has
the most context on both sides (:func:`plan_windows`, :func:`owners`). Nothing is cut silently: only a single
word longer than a window loses its trailing sub-tokens, which carry no label.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("azmlinfsrv.finetune_ner_score")

DEFAULT_MAX_LENGTH = 128
DEFAULT_STRIDE = 32
IGNORED = -100  # the label of every sub-token but a word's first (transformers' cross-entropy skips it)
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)

_tagger = None
_model: dict = {}
_limits: dict = {}


# The entry script is one file on AML (its folder holds no package), so these few helpers repeat score.py's.
class BadRequest(ValueError):
    """A request the client must fix; answered with HTTP 400 and this message."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _threads(default: int) -> int:
    return _env_int("FINETUNE_NUM_THREADS", 0) or _env_int("OMP_NUM_THREADS", 0) or default


def find_candidate(root: Path) -> Path:
    """The folder holding candidate.json: ``root`` itself or exactly one folder below it (AML's mount)."""
    if (root / "candidate.json").is_file():
        return root
    found = sorted(path.parent for path in root.glob("*/candidate.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one candidate.json in {root} or one folder below it, found {len(found)}")
    return found[0]


def _model_info(folder: Path) -> dict:
    """``{"name", "version"}`` of the registered model: registered.json, overridden by FINETUNE_MODEL_NAME/_VERSION."""
    registered = folder / "registered.json"
    recorded = json.loads(registered.read_text(encoding="utf-8")) if registered.is_file() else {}
    info = {key: recorded.get(key) for key in ("name", "version")}
    for key, variable in (("name", "FINETUNE_MODEL_NAME"), ("version", "FINETUNE_MODEL_VERSION")):
        info[key] = os.environ.get(variable) or info[key]
    info["version"] = None if info["version"] is None else str(info["version"])
    return info


# ----------------------------------------------------------------------------------------------- words


def split_words(text: str, tokenizer=None) -> list:
    """``(word, start, end)`` of ``text``: the tokenizer's pre-tokenizer offsets when it has one, else :data:`WORD`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if pre is None:
        return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
    words = []
    for _, (start, end) in pre.pre_tokenize_str(text):
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:  # byte-level pre-tokenizers keep the leading space in the piece
            start += len(piece) - len(piece.lstrip())
            words.append((stripped, start, start + len(stripped)))
    return words


def repair_tags(tags: list) -> list:
    """Argmax tags as IOB2: an ``I-X`` not continuing an ``X`` starts one (``B-X``) instead of being lost."""
    repaired, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def entities_from_tags(words: list, tags: list, scores: list, text: str) -> list:
    """Entity dicts of one text from its ``(word, start, end)`` words and their IOB2 tags."""
    found, current = [], None
    for (_, start, end), tag, score in zip(words, tags, scores):
        if tag.startswith("I-") and current is not None and current["label"] == tag[2:]:
            current["end"], current["scores"] = end, current["scores"] + [score]
            continue
        if current is not None:
            found.append(current)
        current = {"text": "", "label": tag[2:], "start": start, "end": end, "scores": [score]} if tag != "O" else None
    if current is not None:
        found.append(current)
    for entity in found:  # text first (see the placeholder above): the response reads in that order
        entity.update(text=text[entity["start"] : entity["end"]], score=round(float(np.mean(entity.pop("scores"))), 6))
    return found


def plan_windows(word_lengths: list, budget: int, stride: int) -> list:
    """Word ranges ``[start, end)`` whose sub-tokens fit ``budget``, each sharing at most ``stride`` sub-tokens of
    context with the one before; every word lies in at least one."""
    sizes = [min(max(length, 1), budget) for length in word_lengths]
    windows, start = [], 0
    while start < len(sizes):
        end, used = start, 0
        while end < len(sizes) and (end == start or used + sizes[end] <= budget):
            used += sizes[end]
            end += 1
        windows.append((start, end))
        if end == len(sizes):
            break
        # The shared context must leave room for the next new word, or the next window would add nothing.
        following, shared, room = end, 0, min(stride, budget - sizes[end])
        while following - 1 > start and shared + sizes[following - 1] <= room:
            following -= 1
            shared += sizes[following]
        start = following
    return windows


def owners(windows: list, words: int) -> list:
    """For each word, the window where it has the most context on its shorter side (first wins a tie)."""
    best = [(-1, 0)] * words
    for number, (start, end) in enumerate(windows):
        for word in range(start, end):
            context = min(word - start, end - 1 - word)
            if context > best[word][0]:
                best[word] = (context, number)
    return [number for _, number in best]


def encode_sentence(tokenizer, words: list, max_length: int, stride: int, tag_ids: list | None = None) -> list:
    """The windows of one sentence as tokenizer encodings (dicts) with ``word_ids`` and, given ``tag_ids``,
    ``labels``: the word's tag on its first sub-token, :data:`IGNORED` on the rest and on special tokens."""
    whole = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    lengths = [0] * len(words)
    for word in whole.word_ids():
        if word is not None:
            lengths[word] += 1
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    encoded = []
    for start, end in plan_windows(lengths, budget, stride):
        window = tokenizer(words[start:end], is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids = [None if w is None else start + w for w in window.word_ids()]
        item = {
            "input_ids": window["input_ids"],
            "attention_mask": window["attention_mask"],
            "window": (start, end),
            "word_ids": word_ids,
        }
        if "token_type_ids" in window:
            item["token_type_ids"] = window["token_type_ids"]
        if tag_ids is not None:
            labels, previous = [], None
            for word in word_ids:
                labels.append(IGNORED if word is None or word == previous else tag_ids[word])
                previous = word
            item["labels"] = labels
        encoded.append(item)
    return encoded


# --------------------------------------------------------------------------------------------- taggers


class TransformerTagger:
    """A fine-tuned token classifier: words in, IOB2 tags and their probabilities out; candidate.json's ``runtime`` turns
    token ids into logits (``torch``, or ONNX Runtime over ``onnx_file``, no torch), the rest is the same under each."""

    def __init__(self, folder: Path, candidate: dict):
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.max_length = _env_int("FINETUNE_MAX_LENGTH", int(candidate.get("max_length") or DEFAULT_MAX_LENGTH))
        self.stride = int(candidate.get("stride") or DEFAULT_STRIDE)
        self.max_batch = _env_int("FINETUNE_MAX_BATCH", 32)
        if candidate.get("runtime", "torch") == "torch":
            import torch
            from transformers import AutoModelForTokenClassification

            torch.set_num_threads(_threads(torch.get_num_threads()))
            model = AutoModelForTokenClassification.from_pretrained(folder).eval()
            self.forward = lambda batch: model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float()
            self.forward = torch.inference_mode()(self.forward)
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.inter_op_num_threads, options.intra_op_num_threads = 1, _threads(os.cpu_count() or 1)
            session = onnxruntime.InferenceSession(str(folder / candidate["onnx_file"]), options)
            names = [node.name for node in session.get_inputs()]
            self.forward = lambda batch: session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]

    def words(self, text: str) -> list:
        return split_words(text, self.tokenizer)

    def tag(self, sentences: list) -> list:
        """``[(tags, scores)]`` per sentence (a list of words)."""
        windows = [
            (index, item)
            for index, words in enumerate(sentences)
            if words
            for item in encode_sentence(self.tokenizer, words, self.max_length, self.stride)
        ]
        probabilities = []
        for first in range(0, len(windows), self.max_batch):
            batch = [item for _, item in windows[first : first + self.max_batch]]
            keys = ("input_ids", "attention_mask", "token_type_ids")
            padded = self.tokenizer.pad(
                [{k: v for k, v in item.items() if k in keys} for item in batch], return_tensors="np"
            )
            logits = np.asarray(self.forward(dict(padded)), dtype=np.float64)
            exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probabilities += list(exp / exp.sum(axis=-1, keepdims=True))
        per_sentence: dict = {}
        for (index, item), proba in zip(windows, probabilities):
            per_sentence.setdefault(index, []).append((item, proba))
        results = []
        for index, words in enumerate(sentences):
            pieces = per_sentence.get(index, [])
            owner = owners([item["window"] for item, _ in pieces], len(words))
            word_proba = [None] * len(words)
            for number, (item, proba) in enumerate(pieces):
                previous = None
                for position, word in enumerate(item["word_ids"]):
                    if word is not None and word != previous and owner[word] == number:
                        word_proba[word] = proba[position]
                    previous = word
            # A word the tokenizer turns into no sub-token at all (a zero-width or control character, which
            # the normaliser drops) has no prediction: it is outside every entity, with certainty.
            best = [None if p is None else int(np.argmax(p)) for p in word_proba]
            tags = repair_tags(["O" if b is None else self.labels[b] for b in best])
            results.append((tags, [1.0 if b is None else float(p[b]) for p, b in zip(word_proba, best)]))
        return results


def crf_features(words: list, position: int) -> dict:
    """Classic word-shape features of one word and its neighbours (the CRF baseline's, at training and serving)."""

    def describe(word: str, prefix: str) -> dict:
        shape = re.sub(r"(.)\1+", r"\1", re.sub(r"\d", "d", re.sub(r"[a-z]", "x", re.sub(r"[A-Z]", "X", word))))
        return {
            f"{prefix}lower": word.lower(),
            f"{prefix}shape": shape[:6],
            f"{prefix}title": word.istitle(),
            f"{prefix}upper": word.isupper(),
            f"{prefix}digit": any(c.isdigit() for c in word),
            f"{prefix}at": word.startswith("@"),
            f"{prefix}hash": word.startswith("#"),
        }

    word = words[position]
    features = {
        "bias": 1.0,
        **describe(word, ""),
        "length": min(len(word), 10),
        **{f"prefix{n}": word[:n].lower() for n in (1, 2, 3)},
        **{f"suffix{n}": word[-n:].lower() for n in (1, 2, 3)},
    }
    for offset in (-2, -1, 1, 2):
        neighbour = position + offset
        if 0 <= neighbour < len(words):
            features.update(describe(words[neighbour], f"{offset}:"))
        else:
            features[f"{offset}:edge"] = True
    return features


class CrfTagger:
    """The CRF baseline candidate (python-crfsuite model file ``crf_file`` of candidate.json)."""

    def __init__(self, folder: Path, candidate: dict):
        import pycrfsuite

        self.tagger = pycrfsuite.Tagger()
        self.tagger.open(str(folder / candidate.get("crf_file", "model.crfsuite")))

    def words(self, text: str) -> list:
        return split_words(text)

    def tag(self, sentences: list) -> list:
        results = []
        for words in sentences:
            if not words:
                results.append(([], []))
                continue
            tags = repair_tags(self.tagger.tag([crf_features(words, i) for i in range(len(words))]))
            results.append((tags, [float(self.tagger.marginal(tag, i)) for i, tag in enumerate(tags)]))
        return results


def automl_request(sentences: list) -> str:
    """Sentences as what AML AutoML's NER model takes: CoNLL without labels, one token a line, a blank line between
    sentences (azureml-automl-dnn-nlp, azureml/automl/dnn/nlp/ner/model_wrapper.py, ``ModelWrapper.predict_proba``)."""
    return "\n\n".join("\n".join(words) for words in sentences)


def automl_answer(text: str, sentences: list) -> list:
    """``[(tags, scores)]`` from that ``predict_proba``'s answer, the same lines as ``token TAG probability``; a
    sentence answered with another number of tokens (cut at the model's length?) is an error, never tagged O."""
    blocks = text.strip("\n").split("\n\n") if sentences else []
    lines = [[line.rsplit(" ", 2) for line in block.split("\n")] for block in blocks]
    if [len(rows) for rows in lines] != [len(words) for words in sentences] or any(len(r) != 3 for r in sum(lines, [])):
        raise ValueError(
            f"AutoML's NER model answered {[len(rows) for rows in lines]} tokens for {len(sentences)} "
            f"sentences of {[len(words) for words in sentences]} words"
        )
    return [(repair_tags([tag for _, tag, _ in rows]), [float(score) for _, _, score in rows]) for rows in lines]


class AutomlTagger:
    """AML AutoML's ``text_ner`` best model (candidate.json's ``mlflow_model``), in the environment it brought."""

    def __init__(self, folder: Path, candidate: dict):
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(str(folder / candidate.get("mlflow_model", "mlflow_model")))

    def words(self, text: str) -> list:
        return split_words(text)

    def tag(self, sentences: list) -> list:
        present = [words for words in sentences if words]
        answered = iter(automl_answer(self.model.predict_proba(automl_request(present)), present) if present else [])
        return [next(answered) if words else ([], []) for words in sentences]


TAGGERS = {"hf": TransformerTagger, "crf": CrfTagger, "automl": AutomlTagger}


def load_tagger(folder: Path):
    candidate = json.loads((Path(folder) / "candidate.json").read_text(encoding="utf-8"))
    family = candidate.get("family")
    if candidate.get("task") != "ner" or family not in TAGGERS:
        raise ValueError(
            f"candidate.json in {folder}: task {candidate.get('task')!r}, family {family!r}; this "
            f"entry script serves NER candidates of family {', '.join(map(repr, TAGGERS))}"
        )
    return TAGGERS[family](Path(folder), candidate)


def answer(tagger, items: list) -> list:
    """The prediction of each request item: entities of a ``text``, tags of ``tokens``."""
    words = [item["tokens"] if "tokens" in item else tagger.words(item["text"]) for item in items]
    tagged = tagger.tag([[w if isinstance(w, str) else w[0] for w in row] for row in words])
    predictions = []
    for item, row, (tags, scores) in zip(items, words, tagged):
        if "tokens" in item:
            predictions.append({"tags": tags, "scores": [round(s, 6) for s in scores]})
        else:
            predictions.append({"entities": entities_from_tags(row, tags, scores, item["text"])})
    return predictions


# --------------------------------------------------------------------------------------------- the server


def parse_request(raw, max_items: int, max_body_bytes: int) -> list:
    """The request's items (``{"text"}`` or ``{"tokens"}``), or :class:`BadRequest` naming what is wrong."""
    if isinstance(raw, (str, bytes, bytearray)):
        if len(raw) > max_body_bytes:
            raise BadRequest(f"request body is {len(raw)} bytes; the limit is {max_body_bytes}")
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as problem:
            raise BadRequest(f"request body is not JSON ({type(problem).__name__})") from None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, list) or not data:
        raise BadRequest('request must be {"data": [{"text": "..."}]} or {"data": [{"tokens": ["..."]}]}')
    if len(data) > max_items:
        raise BadRequest(f'"data" has {len(data)} items; the limit is {max_items} per request')
    for index, item in enumerate(data):
        tokens = item.get("tokens") if isinstance(item, dict) else None
        text_ok = isinstance(item, dict) and isinstance(item.get("text"), str)
        tokens_ok = isinstance(tokens, list) and all(isinstance(token, str) and token.strip() for token in tokens)
        if not (text_ok or tokens_ok):
            raise BadRequest(f'data[{index}] must be {{"text": "..."}} or {{"tokens": [non-empty strings]}}')
    return data


def init() -> None:
    global _tagger, _model, _limits
    folder = find_candidate(Path(os.environ.get("AZUREML_MODEL_DIR", ".")))
    _limits = {
        "max_items": _env_int("FINETUNE_MAX_ITEMS", 64),
        "max_body_bytes": _env_int("FINETUNE_MAX_BODY_BYTES", 1_000_000),
    }
    _tagger, _model = load_tagger(folder), _model_info(folder)
    logger.info("loaded %s from %s (model %s)", type(_tagger).__name__, folder, _model)


def run(raw_data):
    started = time.perf_counter()
    try:
        items = parse_request(raw_data, _limits["max_items"], _limits["max_body_bytes"])
    except BadRequest as problem:
        from azureml_inference_server_http.api.aml_response import AMLResponse

        return AMLResponse({"error": str(problem)}, 400, json_str=True)
    predictions = answer(_tagger, items)
    logger.info("tagged %d items in %.1f ms", len(items), (time.perf_counter() - started) * 1e3)
    return {"predictions": predictions, "model": dict(_model)}


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns for a registered NER version: ``predict(DataFrame with a "text"
    column)`` -> DataFrame with ``entities`` (a JSON list of the endpoint's entity objects per text)."""

    def __init__(self, folder: Path):
        self.tagger = load_tagger(folder)

    def predict(self, model_input, params=None):
        import pandas as pd

        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        answers = answer(self.tagger, [{"text": str(text)} for text in texts])
        return pd.DataFrame({"entities": [json.dumps(a["entities"], ensure_ascii=False) for a in answers]})


def _load_pyfunc(path: str) -> PyfuncModel:
    """MLflow's ``loader_module`` hook (see the registered version's MLmodel)."""
    return PyfuncModel(find_candidate(Path(path)))
