"""The local AutoML candidate: a FLAML search over classical learners on TF-IDF features.

This is a *baseline*, named as such wherever it is shown: it tells whether fine-tuning a transformer
beats a cheap bag-of-words model on the same splits, so it must not be a strawman. Features are TF-IDF of
word 1-2 grams and character 3-5 grams (within word boundaries); FLAML scores every trial by
cross-validation on the train split (``automl.cv_folds``; a few hundred val texts are too few to rank
dozens of trials without over-fitting them), with per-class sample weights (``train.class_weights``).
The TF-IDF + logistic regression one-liner (uncapped word 1-2 + char 3-5 grams, C=1, no weights: the
baseline people would write by hand) is kept unless FLAML's pick beats it clearly. FLAML's own CV score
is the best of dozens of trials on the same folds, so it is optimistic (on an imbalanced set its pick
scored 0.911 against the one-liner's 0.898 there and then lost on test, 0.922 against 0.933). Both are
therefore scored again on fresh folds of train (another shuffle), and FLAML's pick is taken only when
its mean gain exceeds one standard error of the paired per-fold differences: the one-standard-error
rule (Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd ed., section 7.10),
with the simpler model as the default. The chosen model is refitted on all of train. Val is used for
nothing but the reported val metrics (and, in the select stage, the decision rule); the test split is
not touched here.

Multi-label data has no FLAML task: the candidate is then one-vs-rest logistic regression on the same TF-IDF
features (:func:`one_vs_rest`, C=4, the strong linear baseline on GoEmotions), one binary model per label, whose
per-label thresholds the select stage chooses on val like every candidate's.

The candidate is a scikit-learn Pipeline (TF-IDF -> estimator) pickled with joblib, so scoring needs
scikit-learn and the estimator's library (LightGBM/XGBoost), not FLAML. The AML AutoML job is built in
the AML launcher; this module is the local counterpart.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

from finetune.config.schema import AutomlConfig
from finetune.data import read_targets
from finetune.errors import ConfigProblems, UserError
from finetune.selection.metrics import classification_metrics, multi_label_metrics
from finetune.train.losses import class_weights as class_weights_for
from finetune.train.losses import single_label_mode

DESCRIPTION = "local AutoML baseline (FLAML on TF-IDF)"
MULTI_LABEL_DESCRIPTION = "local AutoML baseline (one-vs-rest logistic regression on TF-IDF)"

# FLAML learners that accept sparse TF-IDF input and give probabilities (svc has no predict_proba,
# histgb needs dense input, catboost is not a dependency).
ESTIMATORS = ("lgbm", "xgboost", "xgb_limitdepth", "rf", "extra_tree", "lrl1", "lrl2", "kneighbor", "sgd")
# Character n-grams: the second half of the feature space (the first is word 1-2 grams).
CHAR_NGRAMS = (3, 5)
# best_estimator when the one-liner beat FLAML's pick in cross-validation.
ONE_LINER = "tfidf_lr_one_liner"
# best_estimator of the multi-label candidate.
ONE_VS_REST = "tfidf_ovr_lr"
# Inverse regularisation of the multi-label one-vs-rest model: the setting of the reference GoEmotions figures
# (finetune/data_files SOURCE.md of the shared data: test micro F1 0.538 at dev-tuned thresholds); rare labels
# need weaker regularisation than the single-label one-liner's C=1 (scripts/bench_multilabel.py shows both).
OVR_C = 4.0


def check_config(automl: AutomlConfig) -> list[str]:
    """Problems with the local AutoML settings, for the plan's validation and for :func:`run_automl`."""
    if automl.engine == "none":
        return []
    problems = []
    unknown = [name for name in automl.estimators if name not in ESTIMATORS]
    if unknown:
        problems.append(
            f"automl.estimators={list(automl.estimators)}: unknown {unknown}; choose from {', '.join(ESTIMATORS)}"
        )
    if not automl.estimators:
        problems.append("automl.estimators=[]: name at least one learner")
    if automl.time_budget_s <= 0:
        problems.append(f"automl.time_budget_s={automl.time_budget_s}: must be > 0 seconds")
    if automl.max_features <= 0:
        problems.append(f"automl.max_features={automl.max_features}: must be > 0")
    if automl.cv_folds < 2:
        problems.append(f"automl.cv_folds={automl.cv_folds}: must be >= 2 (folds of the train split)")
    return problems


def _plain(value):
    """FLAML reports numpy scalars in its configs; JSON needs Python numbers and strings."""
    return value.item() if hasattr(value, "item") else value


class _QuietFlaml:
    """Route FLAML's loggers and Python warnings (LightGBM/XGBoost/sklearn chatter) to a log file.

    The progress of the run belongs on the console; what FLAML says about each trial is kept for
    debugging in ``out_dir/flaml.log`` instead of interleaving with the other stages' output. FLAML's
    AutoML logger does not propagate and adds a stdout handler when it has none, so it gets the file
    handler directly; its other loggers (tune) propagate to ``flaml``.
    """

    def __init__(self, log_file: Path):
        self.handler = logging.FileHandler(log_file, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.loggers = [logging.getLogger(name) for name in ("flaml", "flaml.automl.logger", "py.warnings")]

    def __enter__(self):
        self.saved = [(logger.handlers[:], logger.propagate, logger.level) for logger in self.loggers]
        for logger in self.loggers:
            logger.handlers = [self.handler]
            logger.propagate = False
            logger.setLevel(logging.INFO)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("default")
        logging.captureWarnings(True)
        return self

    def __exit__(self, *exc):
        logging.captureWarnings(False)
        self.warnings.__exit__(*exc)
        for logger, (handlers, propagate, level) in zip(self.loggers, self.saved):
            logger.handlers, logger.propagate, logger.level = handlers, propagate, level
        self.handler.close()
        return False


def features(max_features: int):
    """TF-IDF of word 1-2 grams and char 3-5 grams, each capped at ``max_features`` terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), max_features=max_features, sublinear_tf=True)),
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=CHAR_NGRAMS, max_features=max_features, sublinear_tf=True
                ),
            ),
        ]
    )


def one_liner():
    """The TF-IDF + logistic regression one-liner (scripts/bench_quality.py compares every model with it)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    return Pipeline(
        [
            (
                "tfidf",
                FeatureUnion(
                    [
                        ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                        ("chars", TfidfVectorizer(analyzer="char", ngram_range=CHAR_NGRAMS, sublinear_tf=True)),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=2000)),
        ]
    )


def balanced_baseline(task: str):
    """The one-liner every fine-tuned model is held to (the learning check in training, scripts/bench_quality.py):
    single-label, :func:`one_liner` with class-balanced weights, so a skewed set's rare classes count as they do
    in F1 macro; multi-label, :func:`one_vs_rest`, whose per-label models already see each label's positives."""
    if task == "multi_label":
        return one_vs_rest()
    pipeline = one_liner()
    pipeline.set_params(model__class_weight="balanced")
    return pipeline


def one_vs_rest(c: float = OVR_C):
    """One-vs-rest logistic regression on the one-liner's TF-IDF features: the multi-label baseline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    pipeline = one_liner()
    pipeline.steps[-1] = ("model", OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)))
    return pipeline


def _fold_aucs(pipeline, texts: list[str], y, splitter, multiclass: bool, sample_weight=None):
    """AUC on each fold of ``splitter``; ``sample_weight`` reaches the pipeline's final step when it takes one."""
    from sklearn.model_selection import cross_val_score
    from sklearn.utils.validation import has_fit_parameter

    final_step = pipeline.steps[-1][1]
    params = (
        {"model__sample_weight": sample_weight}
        if sample_weight is not None and has_fit_parameter(final_step, "sample_weight")
        else None
    )
    return cross_val_score(
        pipeline,
        texts,
        y,
        cv=splitter,
        n_jobs=1,
        params=params,
        scoring="roc_auc_ovr_weighted" if multiclass else "roc_auc",
    )


def clearly_better(challenger, incumbent) -> bool:
    """Whether the challenger's mean per-fold gain exceeds one standard error of the paired differences."""
    import numpy as np

    gains = np.asarray(challenger) - np.asarray(incumbent)
    standard_error = gains.std(ddof=1) / np.sqrt(len(gains))
    return bool(gains.mean() > standard_error)


def run_automl(data, automl_cfg: AutomlConfig, out_dir: Path, seed: int, class_weights: str = "auto") -> dict:
    """Search for the best classical text classifier in ``time_budget_s`` and save it as a candidate.

    ``data`` is the prepared data (anything with ``train_path``, ``val_path`` and ``labels``). Writes
    ``out_dir/model/`` (``model.joblib``, ``candidate.json``), ``out_dir/result.json`` (the returned
    candidate), ``out_dir/flaml.log`` (FLAML's messages) and ``out_dir/flaml_trials.jsonl`` (one record
    per trial). ``class_weights`` is a :func:`finetune.train.losses.class_weights` mode. The search is seeded, but
    a time-bounded search runs as many trials as the machine allows, so the chosen model can differ between
    machines.
    """
    problems = check_config(automl_cfg)
    if problems:
        raise ConfigProblems(problems)
    task = getattr(data, "task", "single_label")
    labels = list(data.labels)
    (train_texts, train_y), (val_texts, val_y), train_counts = _train_and_val(data, labels, task)
    if task == "multi_label":
        return _run_multi_label(labels, train_texts, train_y, val_texts, val_y, Path(out_dir))
    import numpy as np
    from flaml import AutoML
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # FLAML's log goes there before the model does
    print(
        f"{DESCRIPTION}: {', '.join(automl_cfg.estimators)} for {automl_cfg.time_budget_s} s, "
        f"{automl_cfg.cv_folds}-fold CV on {len(train_texts)} train texts ...",
        flush=True,
    )
    started = time.time()
    y_train = np.asarray(train_y)
    folds = min(automl_cfg.cv_folds, int(train_counts.min()))
    if folds < 2:
        raise UserError(
            f"{data.train_path}: a class has a single training example; cross-validation needs "
            "two per class (more data, or fewer classes)"
        )
    multiclass = len(labels) > 2
    # Other folds than FLAML's (its seed), so that neither score is the one a search was ranked on.
    fresh_folds = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + 1)
    anchor_started = time.time()
    anchor_aucs = _fold_aucs(one_liner(), train_texts, y_train, fresh_folds, multiclass)
    # Re-scoring FLAML's pick on the fresh folds costs about what the one-liner's scoring did, and refitting
    # the chosen model on all of train about half that again: both are reserved from FLAML's budget.
    rescore_reserve_s = 1.5 * (time.time() - anchor_started)
    vectorizer = features(automl_cfg.max_features)
    x_train = vectorizer.fit_transform(train_texts)
    if single_label_mode(class_weights, len(labels)) == "logit_adjusted":
        # A loss on shifted logits has no sample-weight form for these models: they keep the balanced weights.
        class_weights = "balanced"
    weights = class_weights_for(train_y, len(labels), class_weights)
    sample_weight = None if weights is None else np.asarray(weights)[y_train]
    automl = AutoML()
    with _QuietFlaml(out_dir / "flaml.log"):
        automl.fit(
            X_train=x_train,
            y_train=y_train,
            sample_weight=sample_weight,
            task="classification",
            metric="roc_auc_ovr_weighted" if multiclass else "roc_auc",
            estimator_list=list(automl_cfg.estimators),
            time_budget=max(1.0, automl_cfg.time_budget_s - (time.time() - started) - rescore_reserve_s),
            eval_method="cv",
            n_splits=folds,
            seed=seed,
            # The chosen configuration is refitted on all of train (never on val).
            retrain_full=True,
            log_file_name=str(out_dir / "flaml_trials.jsonl"),
            verbose=3,  # INFO: one line per trial, into flaml.log
            # A FLAML-made MLflow run per trial would flood the run's experiment; the launcher records
            # the candidate itself.
            mlflow_logging=False,
        )
    # FLAML minimises 1 - AUC over its folds: the search's (optimistic) score of its pick.
    search_auc = None if automl.model is None else 1.0 - float(automl.best_loss)
    flaml_aucs = None
    if automl.model is not None:
        flaml_aucs = _fold_aucs(
            Pipeline([("tfidf", features(automl_cfg.max_features)), ("model", clone(automl.model.estimator))]),
            train_texts,
            y_train,
            fresh_folds,
            multiclass,
            sample_weight,
        )
    if flaml_aucs is not None and clearly_better(flaml_aucs, anchor_aucs):
        # The bare estimator, not FLAML's wrapper: the pickle then loads without FLAML installed. Every
        # class is in train and y holds ids, so predict_proba's columns are the label ids in order.
        pipeline = Pipeline([("tfidf", vectorizer), ("model", automl.model.estimator)])
        best_estimator = automl.best_estimator
        best_config = {key: _plain(value) for key, value in automl.best_config.items()}
    else:
        pipeline = one_liner().fit(train_texts, y_train)
        best_estimator, best_config = ONE_LINER, {"C": 1.0}
    anchor_auc = float(anchor_aucs.mean())
    flaml_auc = None if flaml_aucs is None else float(flaml_aucs.mean())
    candidate = _save(
        pipeline,
        out_dir,
        {"labels": labels},
        {
            "best_estimator": best_estimator,
            "best_config": best_config,
            # Mean AUC over the fresh folds of train (what the choice was made on), and FLAML's own figure.
            "cv_auc": {
                "one_liner": round(anchor_auc, 4),
                "flaml": None if flaml_auc is None else round(flaml_auc, 4),
                "flaml_search": None if search_auc is None else round(search_auc, 4),
                "folds": {
                    "one_liner": [round(float(x), 4) for x in anchor_aucs],
                    "flaml": None if flaml_aucs is None else [round(float(x), 4) for x in flaml_aucs],
                },
            },
            "val": classification_metrics(val_y, pipeline.predict_proba(val_texts)),
            "time_budget_s": automl_cfg.time_budget_s,
            "duration_s": round(time.time() - started, 1),
            "description": DESCRIPTION,
        },
    )
    verdict = (
        "no FLAML trial finished"
        if flaml_auc is None
        else f"FLAML's {automl.best_estimator} {flaml_auc:.4f}"
        + ("" if best_estimator != ONE_LINER else ", not better by one standard error")
    )
    print(
        f"{DESCRIPTION}: best {best_estimator} (fresh-fold CV AUC: one-liner {anchor_auc:.4f}, {verdict}), "
        f"val auc_weighted {candidate['val']['auc_weighted']:.4f} (FLAML log: {out_dir / 'flaml.log'})",
        flush=True,
    )
    return candidate


def _run_multi_label(labels, train_texts, train_y, val_texts, val_y, out_dir: Path) -> dict:
    """The multi-label candidate: :func:`one_vs_rest` fitted on train (see the module docstring)."""
    print(
        f"{MULTI_LABEL_DESCRIPTION}: C={OVR_C:g}, {len(train_texts)} train texts, {len(labels)} labels ...", flush=True
    )
    started = time.time()
    pipeline = one_vs_rest().fit(train_texts, train_y)
    candidate = _save(
        pipeline,
        out_dir,
        {"task": "multi_label", "labels": labels},
        {
            "best_estimator": ONE_VS_REST,
            "best_config": {"C": OVR_C},
            "val": multi_label_metrics(val_y, pipeline.predict_proba(val_texts)),
            "duration_s": round(time.time() - started, 1),
            "description": MULTI_LABEL_DESCRIPTION,
        },
    )
    print(
        f"{MULTI_LABEL_DESCRIPTION}: {ONE_VS_REST}, val f1_micro {candidate['val']['f1_micro']:.4f} at 0.5 in "
        f"{candidate['duration_s']:.0f} s",
        flush=True,
    )
    return candidate


def _train_and_val(data, labels: list, task: str):
    """(texts, targets) of train and val, and the train examples per class (label); every class (label) must
    have one to be learnt."""
    import numpy as np

    train, val = (read_targets(path, labels, task) for path in (data.train_path, data.val_path))
    counts = (
        np.asarray(train[1]).sum(axis=0)
        if task == "multi_label"
        else np.bincount(np.asarray(train[1], dtype=np.int64), minlength=len(labels))
    )
    missing = [label for label, count in zip(labels, counts) if count == 0]
    if missing:
        unit = "label" if task == "multi_label" else "class"
        raise UserError(
            f"{data.train_path}: no training example of {missing}; the AutoML baseline needs every "
            f"{unit} in the train split"
        )
    return train, val, counts


def _save(pipeline, out_dir: Path, model_info: dict, result: dict) -> dict:
    """``out_dir/model/`` (the pickled pipeline and its candidate.json) and ``out_dir/result.json``; returns the
    candidate record."""
    import joblib

    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, model_dir / "model.joblib")
    (model_dir / "candidate.json").write_text(
        json.dumps(
            {
                "family": "automl",
                **model_info,
                "best_estimator": result["best_estimator"],
                "config": result["best_config"],
                "description": result["description"],
            },
            indent=2,
        )
    )
    candidate = {"family": "automl", "path": str(model_dir), **result}
    (out_dir / "result.json").write_text(json.dumps(candidate, indent=2))
    return candidate
