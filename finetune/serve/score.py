"""Scoring entry script (AML ``init()``/``run()`` contract) for every candidate family.

The same file serves a model locally (``azmlinfsrv`` behind :class:`finetune.serve.endpoint.LocalEndpoint`)
and on Azure ML, where it is copied next to the registered model and the ``finetune`` package is not
installed: it imports only the standard library, numpy, the tokenizer (transformers) and the runtime of
``hf`` candidates (torch, or onnxruntime for ``onnx``/``onnx-int8``, as ``runtime`` in candidate.json says),
joblib or MLflow (``automl`` candidates: local, or AML AutoML's MLflow model) and the inference server's
``AMLResponse`` (only to answer a bad request).
Every caller goes the same two steps: the runtime turns texts into probabilities
(``load_scorer(folder).predict_proba``), then :func:`decide` turns probabilities into labels. The online
``run()``, ``python -m finetune.predict``, the test scoring of ``finetune.selection.choose`` and the MLflow pyfunc
flavour (``_load_pyfunc``, the ``loader_module`` of a registered version's MLmodel) all use both.

The request, the response (``label``, or ``labels`` for a multi-label candidate, with probabilities), the HTTP
400 answer to a malformed request and the environment variables are in docs/contracts.md, "Scoring". The label
is the candidate's decision rule (``decision`` in candidate.json, chosen on val by the select stage) applied by
:func:`decide`; selection scores candidates with the same function.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

# A child of the inference server's own logger: azmlinfsrv configures that one (the root logger has no
# handler there), so these lines reach the deployment log in the server's format.
logger = logging.getLogger("azmlinfsrv.finetune_score")

DEFAULT_MAX_LENGTH = 128
# Most padded tokens per real token in one forward chunk (see HFScorer.chunks).
MAX_PADDING = 1.5

_scorer = None
_decision: dict | None = None
_model: dict = {}
_limits: dict = {}


class BadRequest(ValueError):
    """A request the client must fix; answered with HTTP 400 and this message."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def find_candidate(root: Path) -> Path:
    """The folder holding candidate.json: ``root`` itself or exactly one folder below it."""
    if (root / "candidate.json").is_file():
        return root
    found = sorted(path.parent for path in root.glob("*/candidate.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no candidate.json in {root} or in a folder one level below it")
    raise ValueError(f"several candidates under {root}: {', '.join(p.name for p in found)}")


def _model_info(folder: Path) -> dict:
    info = {"name": None, "version": None}
    registered = folder / "registered.json"
    if registered.is_file():
        recorded = json.loads(registered.read_text(encoding="utf-8"))
        info.update({key: recorded.get(key) for key in info})
    for key, variable in (("name", "FINETUNE_MODEL_NAME"), ("version", "FINETUNE_MODEL_VERSION")):
        if os.environ.get(variable):
            info[key] = os.environ[variable]
    if info["version"] is not None:
        info["version"] = str(info["version"])
    return info


def _cpu_budget(default: int) -> int:
    """torch's default thread count capped by the CPUs this process may use (affinity, cgroup quota): torch
    counts the host's cores, and a container running more threads than its CPUs loses far more than it gains."""
    budget = min(default, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else default
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            budget = min(budget, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, budget)


RUNTIMES = ("torch", "onnx", "onnx-int8")


class TorchForward:
    """PyTorch fp32 forward of the saved Hugging Face weights."""

    def __init__(self, folder: Path, num_labels: int):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.threads = _threads(torch.get_num_threads())
        torch.set_num_threads(self.threads)
        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        if self.model.config.num_labels != num_labels:
            raise ValueError(
                f"the model has {self.model.config.num_labels} outputs but candidate.json lists {num_labels} labels"
            )

    def __call__(self, batch: dict) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.model(**{name: self.torch.from_numpy(array) for name, array in batch.items()}).logits
        return logits.float().numpy()


class OnnxForward:
    """ONNX Runtime forward of the exported graph (fp32 or dynamically quantised int8), CPU provider."""

    def __init__(self, path: Path, num_labels: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One request at a time per worker: every thread goes to the operators, none to parallel branches.
        options.inter_op_num_threads = 1
        self.threads = _threads(os.cpu_count() or 1)
        options.intra_op_num_threads = self.threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [node.name for node in self.session.get_inputs()]
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != num_labels:
            raise ValueError(f"{path.name} has {outputs} outputs but candidate.json lists {num_labels} labels")

    def __call__(self, batch: dict) -> np.ndarray:
        return self.session.run(None, {name: batch[name].astype(np.int64) for name in self.inputs})[0]


def _threads(default: int) -> int:
    """FINETUNE_NUM_THREADS, else OMP_NUM_THREADS (onnxruntime ignores it), else ``default`` within the CPU budget."""
    return _env_int("FINETUNE_NUM_THREADS", 0) or _env_int("OMP_NUM_THREADS", 0) or _cpu_budget(default)


class HFScorer:
    """A fine-tuned sequence classifier: one tokenizer call per request, length-sorted chunks under a token budget.

    The runtime (``runtime`` in candidate.json: ``torch``, ``onnx`` or ``onnx-int8``) only turns token ids
    into logits; tokenisation, truncation and batching are the same under every runtime.
    """

    def __init__(
        self,
        folder: Path,
        labels: list[str],
        max_length: int,
        max_batch: int,
        runtime: str = "torch",
        onnx_file: str | None = None,
        multi_label: bool = False,
    ):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        # Progress bars are carriage-return noise in a deployment log.
        hf_logging.disable_progress_bar()
        if runtime not in RUNTIMES:
            raise ValueError(f"candidate.json names runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if runtime == "torch":
            self.forward = TorchForward(folder, len(labels))
        else:
            if not onnx_file or not (folder / onnx_file).is_file():
                raise FileNotFoundError(
                    f"candidate.json names runtime {runtime} but its ONNX file {onnx_file!r} is not in {folder}"
                )
            self.forward = OnnxForward(folder / onnx_file, len(labels))
        self.runtime = runtime
        self.multi_label = multi_label
        self.labels = labels
        self.max_length = max_length
        self.max_batch = max_batch
        self.chunk_tokens = _env_int("FINETUNE_CHUNK_TOKENS", 0) or 512 * self.forward.threads

    def chunks(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices in ascending length, cut where a chunk would pass ``max_batch`` rows or
        ``chunk_tokens`` padded tokens, or be more than a third padding (a single text always fits: it
        is at most ``max_length`` long). The padding cut is for small requests of unequal texts (docs/performance.md).
        """
        order = np.argsort(lengths, kind="stable")
        if not len(order):
            return []
        cuts, rows, tokens = [], 0, 0
        for position, row in enumerate(order):
            # Ascending order: the text being added is the chunk's longest, so it sets the padded width.
            padded = (rows + 1) * int(lengths[row])
            if rows and (
                rows == self.max_batch
                or padded > self.chunk_tokens
                or padded > MAX_PADDING * (tokens + int(lengths[row]))
            ):
                cuts.append(position)
                rows, tokens = 0, 0
            rows += 1
            tokens += int(lengths[row])
        return np.split(order, cuts)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        lengths = encoded["attention_mask"].sum(axis=1)
        left_padded = self.tokenizer.padding_side == "left"
        proba = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for rows in self.chunks(lengths):
            # Each chunk is trimmed to its longest text.
            width = int(lengths[rows].max())
            columns = slice(-width, None) if left_padded else slice(0, width)
            logits = self.forward(
                {name: np.ascontiguousarray(array[rows][:, columns]) for name, array in encoded.items()}
            ).astype(np.float32)
            proba[rows] = _sigmoid(logits) if self.multi_label else _softmax(logits)
        return proba


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp of a large positive logit overflows float32; through tanh the result is exact at both ends.
    return 0.5 * (np.tanh(0.5 * logits) + 1.0)


class AutomlScorer:
    """The local AutoML stage's scikit-learn pipeline (``model.joblib``, texts in), or AML AutoML NLP's MLflow
    model in candidate.json's ``mlflow_model`` subfolder through its sklearn flavour (DataFrame of the training
    columns in; it loads only where its conda.yaml, AutoML NLP's runtime, is installed)."""

    def __init__(self, folder: Path, labels: list[str], mlflow_model: str | None = None):
        source = folder / (mlflow_model or "model.joblib")
        try:
            if mlflow_model:
                import mlflow.sklearn

                self.pipeline = mlflow.sklearn.load_model(str(source))
            else:
                import joblib

                self.pipeline = joblib.load(source)
        except Exception as problem:
            # Unpickling errors name a byte, not the file; the deployment log should say which file it was.
            needs = f" (it loads in the environment of {source / 'conda.yaml'})" if mlflow_model else ""
            raise ValueError(f"cannot load {source}: {type(problem).__name__}: {problem}{needs}") from problem
        if not hasattr(self.pipeline, "predict_proba"):
            raise TypeError(f"{source} has no predict_proba")
        self.frame = bool(mlflow_model)
        classes = list(getattr(self.pipeline, "classes_", range(len(labels))))
        # Classes are label ids by contract; a pipeline fitted on label names is mapped by name instead.
        self.columns = [labels.index(str(c)) if str(c) in labels else int(c) for c in classes]
        self.labels = labels

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self.frame:
            import pandas as pd

            texts = pd.DataFrame({"text": texts})
        proba = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        proba[:, self.columns] = np.asarray(self.pipeline.predict_proba(texts))
        return proba


def read_candidate(folder: Path) -> dict:
    """``candidate.json`` of the candidate in ``folder``."""
    candidate = json.loads((Path(folder) / "candidate.json").read_text(encoding="utf-8"))
    # A model registered before ``family`` had its name (production, a registered version) says ``kind``.
    if "family" not in candidate and "kind" in candidate:
        candidate["family"] = candidate.pop("kind")
    return candidate


def load_scorer(folder: Path, max_batch: int | None = None):
    """The scorer of the candidate in ``folder`` (its candidate.json says which family, runtime and decision rule)."""
    candidate = read_candidate(folder)
    labels = [str(label) for label in candidate["labels"]]
    family = candidate.get("family")
    if family == "hf":
        max_length = _env_int("FINETUNE_MAX_LENGTH", int(candidate.get("max_length") or DEFAULT_MAX_LENGTH))
        scorer = HFScorer(
            folder,
            labels,
            max_length,
            max_batch or _env_int("FINETUNE_MAX_BATCH", 32),
            runtime=candidate.get("runtime", "torch"),
            onnx_file=candidate.get("onnx_file"),
            multi_label=candidate.get("task") == "multi_label",
        )
    elif family == "automl":
        scorer = AutomlScorer(folder, labels, candidate.get("mlflow_model"))
    else:
        raise ValueError(f"candidate.json in {folder} has family {family!r}; expected 'hf' or 'automl'")
    scorer.task = candidate.get("task", "single_label")
    scorer.decision = candidate.get("decision") or (
        {"rule": "per_label_thresholds", "thresholds": {label: 0.5 for label in labels}}
        if scorer.task == "multi_label"
        else None
    )
    # Checked now, not at the first request: a rule that cannot be applied must stop the deployment.
    decided = decide(np.full((1, len(labels)), 1.0 / len(labels)), labels, scorer.decision)
    if (decided.ndim == 2) != (scorer.task == "multi_label"):
        raise ValueError(
            f"candidate.json in {folder}: decision rule {scorer.decision.get('rule')!r} does not fit "
            f"task {scorer.task!r}"
        )
    return scorer


def decide(proba, labels: list[str], decision: dict | None) -> np.ndarray:
    """Label ids (columns of ``proba``, in ``labels`` order) under a candidate's decision rule (the rules:
    docs/contracts.md, "Candidates"); a multi-label rule gives an n x k boolean array. Only the labels depend on
    the rule, never the probabilities."""
    proba = np.asarray(proba, dtype=np.float64)
    rule = (decision or {}).get("rule", "argmax")
    if rule == "argmax":
        return proba.argmax(axis=1)
    if rule == "threshold":
        if len(labels) != 2:
            raise ValueError(f"decision rule 'threshold' needs two labels, the candidate has {labels}")
        positive = labels.index(decision["positive_label"])
        return np.where(proba[:, positive] >= float(decision["threshold"]), positive, 1 - positive)
    if rule == "class_weights":
        weights = np.array([float(decision["weights"][label]) for label in labels])
        return (proba * weights).argmax(axis=1)
    if rule == "per_label_thresholds":
        thresholds = np.array([float(decision["thresholds"][label]) for label in labels])
        return proba >= thresholds
    raise ValueError(
        f"unknown decision rule {rule!r}; expected argmax, threshold, class_weights or per_label_thresholds"
    )


def decided_labels(proba, labels: list[str], decision: dict | None) -> list:
    """The label names :func:`decide` picks: what the endpoint, the pyfunc model and batch prediction answer
    (a list of names per text for a multi-label rule)."""
    decided = decide(proba, labels, decision)
    if decided.ndim == 2:
        return [[label for label, on in zip(labels, row) if on] for row in decided]
    return [labels[int(index)] for index in decided]


def prediction(label, row, labels: list[str]) -> dict:
    """One text's answer: ``label`` (or ``labels`` for multi-label) and every label's probability."""
    return {
        "labels" if isinstance(label, list) else "label": label,
        "probabilities": {name: round(float(p), 6) for name, p in zip(labels, row)},
    }


def init() -> None:
    """Load the candidate under AZUREML_MODEL_DIR once per worker; any problem stops the server."""
    global _scorer, _decision, _model, _limits
    folder = find_candidate(Path(os.environ.get("AZUREML_MODEL_DIR", ".")))
    _limits = {
        "max_items": _env_int("FINETUNE_MAX_ITEMS", 64),
        "max_body_bytes": _env_int("FINETUNE_MAX_BODY_BYTES", 1_000_000),
        "log_requests": os.environ.get("FINETUNE_LOG_REQUESTS", "").lower() in ("1", "true", "yes"),
    }
    _scorer, _model = load_scorer(folder), _model_info(folder)
    _decision = _scorer.decision
    logger.info(
        "loaded %s candidate from %s (labels %s, runtime %s, decision %s, model %s)",
        type(_scorer).__name__,
        folder,
        _scorer.labels,
        getattr(_scorer, "runtime", "sklearn"),
        _decision or {"rule": "argmax"},
        _model,
    )


def parse_request(raw, max_items: int, max_body_bytes: int) -> list[str]:
    """The request's texts, or :class:`BadRequest` naming what is wrong (never echoing the body)."""
    if isinstance(raw, (str, bytes, bytearray)):
        size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
        if size > max_body_bytes:
            raise BadRequest(f"request body is {size} bytes; the limit is {max_body_bytes}")
        try:
            raw = json.loads(raw)
        except UnicodeDecodeError as problem:  # a subclass of ValueError: bytes that are not UTF-8
            raise BadRequest(f"request body is not UTF-8 ({problem.reason} at byte {problem.start})") from None
        except ValueError as problem:
            raise BadRequest(f"request body is not JSON ({problem})") from None
        except RecursionError:
            # json's decoder recurses once per nesting level: absurd nesting is a bad request, not a crash.
            raise BadRequest('request body nests JSON too deeply; send {"data": [{"text": "..."}]}') from None
    if not isinstance(raw, dict) or "data" not in raw:
        raise BadRequest('request must be a JSON object with a "data" list, e.g. {"data": [{"text": "..."}]}')
    data = raw["data"]
    if not isinstance(data, list):
        raise BadRequest('"data" must be a list of {"text": "..."} objects')
    if not data:
        raise BadRequest('"data" is empty; send at least one {"text": "..."} item')
    if len(data) > max_items:
        raise BadRequest(f'"data" has {len(data)} items; the limit is {max_items} per request')
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise BadRequest(f'data[{index}] must be an object with a string "text"')
        try:
            item["text"].encode("utf-8")
        except UnicodeEncodeError:  # JSON's "\ud800" escapes decode to text no tokenizer can encode
            raise BadRequest(
                f"data[{index}].text holds an unpaired surrogate (\\ud800-\\udfff); send real text"
            ) from None
    return [item["text"] for item in data]


def run(raw_data):
    """Score one request. azmlinfsrv passes the body as a string (run() is undecorated); a dict also works."""
    started = time.perf_counter()
    try:
        texts = parse_request(raw_data, _limits["max_items"], _limits["max_body_bytes"])
    except BadRequest as problem:
        logger.info("rejected request: %s", problem)
        # Imported here: the MLflow pyfunc loader and batch prediction use this file without the server.
        from azureml_inference_server_http.api.aml_response import AMLResponse

        return AMLResponse({"error": str(problem)}, 400, json_str=True)
    proba = _scorer.predict_proba(texts)
    labels = _scorer.labels
    predictions = [
        prediction(label, row, labels) for label, row in zip(decided_labels(proba, labels, _decision), proba)
    ]
    logger.info("scored %d texts in %.1f ms", len(texts), (time.perf_counter() - started) * 1e3)
    if _limits["log_requests"]:
        logger.info("request texts: %s", json.dumps(texts))
    return {"predictions": predictions, "model": dict(_model)}


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns for a registered version: the same scorer and decision.

    ``predict(DataFrame with a "text" column)`` -> DataFrame ``label`` (multi-label: ``labels``, a list per
    row), ``probability_<label>`` per class.
    """

    def __init__(self, folder: Path):
        self.scorer = load_scorer(folder)

    def predict(self, model_input, params=None):
        import pandas as pd

        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        texts = [str(text) for text in texts]
        labels = self.scorer.labels
        proba = self.scorer.predict_proba(texts) if texts else np.zeros((0, len(labels)))
        column = "labels" if self.scorer.task == "multi_label" else "label"
        table = pd.DataFrame({column: decided_labels(proba, labels, self.scorer.decision)})
        for column, label in enumerate(labels):
            table[f"probability_{label}"] = proba[:, column].astype(np.float64)
        return table


def _load_pyfunc(path: str) -> PyfuncModel:
    """MLflow's ``loader_module`` hook (see the registered version's MLmodel)."""
    return PyfuncModel(find_candidate(Path(path)))
