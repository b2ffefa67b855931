"""What each stage hands the next, typed; summary.json is their serialisation (docs/contracts.md).

Each result is made once, by the stage that produced it, and read by attribute afterwards: a later stage adds
its own result beside an earlier one instead of writing into it (selection's test figures are the selection's,
and appear under each candidate only when summary.json is written). ``to_dict()`` is a result's section.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

from finetune.selection.decisions import DecisionRule, Verdict, recorded_rule
from finetune.serve.rollout import ModelRef

if TYPE_CHECKING:
    pass


def drop_none(data: dict) -> dict:
    """A section without its unset keys, so a saved result shows only what happened."""
    return {key: value for key, value in data.items() if value is not None}


def _with_family(data: dict) -> dict:
    """A saved candidate or table row whose ``family`` was written under its earlier name, ``kind``, renamed."""
    return {("family" if key == "kind" and "family" not in data else key): value for key, value in data.items()}


@dataclass
class TrainingResult:
    """One training's ``result.json`` (docs/contracts.md), as the stages after it read it."""

    result_file: str
    status: str
    model_dir: Optional[str]
    val: Dict[str, float]
    mlflow_run_id: Optional[str]
    duration_s: float
    throughput: dict
    runtime: dict
    hyperparameters: dict

    @classmethod
    def read(cls, path: Path | str) -> "TrainingResult":
        data = json.loads(Path(path).read_text())
        return cls(
            result_file=str(path),
            status=data.get("status"),
            model_dir=data.get("model_dir"),
            val=data.get("val") or {},
            mlflow_run_id=data.get("mlflow_run_id"),
            duration_s=data.get("duration_s") or 0.0,
            throughput=data.get("throughput") or {},
            runtime=data.get("runtime") or {},
            hyperparameters=data.get("hyperparameters") or {},
        )

    def section(self, base_model: str) -> dict:
        """summary.json's ``training``: the kept training's throughput, runtime and hyperparameters."""
        return {
            "throughput": self.throughput,
            "runtime": self.runtime,
            "hyperparameters": self.hyperparameters,
            "base_model": base_model,
        }


@dataclass
class SweepTrial:
    """One finished trial of a sweep's table (a retried trial's replacement stands in its place)."""

    number: int
    params: dict
    status: str  # completed | early_terminated | failed
    best_value: Optional[float]
    values: List[Optional[float]]  # the primary metric at each evaluation interval (None: not finite)
    epochs_run: Optional[float] = None
    steps: Optional[int] = None
    duration_s: Optional[float] = None
    stopped_at_interval: Optional[int] = None  # early-terminated trials only
    reason: Optional[str] = None
    ended_s: Optional[float] = None  # seconds of sweep wall time when it ended (the anytime curve's x)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BestTrial:
    """The trial whose model the sweep keeps."""

    trial: int
    params: dict
    value: float
    model_dir: str
    val: Dict[str, float]
    result_file: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SweepResult:
    """A sweep's trial table and best trial (``sweep.json``; summary.json's ``sweep``), and the best trial's
    training result, read once by the sweep (not part of the section: summary.json's ``training`` holds it)."""

    sampling: str
    policy: dict
    primary_metric: str
    goal: str  # maximize | minimize
    trials: List[SweepTrial]
    best: Optional[BestTrial]
    compute: dict  # trial_epochs, trial_seconds, wall_seconds
    best_training: Optional[TrainingResult] = None

    @classmethod
    def from_dict(cls, data: dict) -> "SweepResult":
        best = data.get("best")
        return cls(
            sampling=data["sampling"],
            policy=data.get("policy") or {},
            primary_metric=data["primary_metric"],
            goal=data.get("goal", "maximize"),
            trials=[SweepTrial(**trial) for trial in data.get("trials", [])],
            best=BestTrial(**best) if best else None,
            compute=data.get("compute") or {},
        )

    def to_dict(self) -> dict:
        return {
            "sampling": self.sampling,
            "policy": self.policy,
            "primary_metric": self.primary_metric,
            "goal": self.goal,
            "trials": [trial.to_dict() for trial in self.trials],
            "best": self.best.to_dict() if self.best is not None else None,
            "compute": self.compute,
        }


@dataclass
class Candidate:
    """A model the select stage tests: a fine-tuned transformer, an AutoML baseline, production re-scored."""

    family: str  # hf (a fine-tuned transformer) | automl | production (re-scored)
    path: str
    source: Optional[str] = None
    val: Optional[dict] = None
    params: Optional[dict] = None  # a sweep trial's hyperparameters
    result_file: Optional[str] = None  # the training's result.json
    trained_path: Optional[str] = None  # the trained model before the export stage made ``path``
    runtime: Optional[str] = None  # the serving runtime ``path`` was exported for
    extra: dict = field(default_factory=dict)  # what the stage records beyond these (AutoML's search)

    @classmethod
    def from_dict(cls, data: dict) -> "Candidate":
        data = _with_family(data)
        known = {name for name in cls.__dataclass_fields__ if name != "extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known}
        )

    def to_dict(self) -> dict:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "extra"}
        return {**drop_none(fields), **self.extra}


# A table row's keys besides its test metrics, in the order summary.json has them.
_ROW_FIGURES = ("test_argmax", "test_proba", "test_labels")
_ROW_KEYS = ("decision", *_ROW_FIGURES)


@dataclass
class SelectionRow:
    """One candidate of the selection table: its test metrics at its decision rule, or why it could not be scored."""

    candidate: str
    family: Optional[str]  # hf | automl | production (None: failed before its candidate.json was read)
    test: Dict[str, float] = field(default_factory=dict)
    decision: Optional[DecisionRule] = None  # the rule it ships
    test_argmax: Optional[dict] = None  # its metrics at argmax (multi-label: at 0.5)
    test_proba: Optional[str] = None  # <name>_test_proba.npy, for the report's plots
    test_labels: Optional[str] = None
    error: Optional[str] = None

    @classmethod
    def from_dict(cls, data: dict) -> "SelectionRow":
        data = _with_family(data)
        if "error" in data:
            return cls(candidate=data["candidate"], family=data.get("family"), error=data["error"])
        # Every other key of a row is a test metric, flat beside the candidate's name in summary.json.
        return cls(
            candidate=data["candidate"],
            family=data.get("family"),
            decision=recorded_rule(data.get("decision")),
            **{k: data[k] for k in _ROW_FIGURES if k in data},
            test={k: v for k, v in data.items() if k not in ("candidate", "family", *_ROW_KEYS)},
        )

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"candidate": self.candidate, "family": self.family, "error": self.error}
        rule = self.decision.to_dict() if self.decision is not None else None
        return {
            "candidate": self.candidate,
            "family": self.family,
            **self.test,
            **drop_none({"decision": rule, **{key: getattr(self, key) for key in _ROW_FIGURES}}),
        }


@dataclass
class SelectionResult:
    """The select stage's verdict: :func:`finetune.selection.choose.choose`'s table (best first, failed candidates last)
    and verdict, the production version compared with, and the re-check made when production moved before
    promotion."""

    metric: str
    task: str
    margin: float
    production: Optional[str]  # the production candidate's name in the table, None when there was none
    table: List[SelectionRow]
    winner: Optional[str]
    verdict: Verdict  # summary.json's "decision"
    reason: str
    production_version: Optional[dict] = None  # {"name", "version"} of the production model re-scored
    recheck: Optional[dict] = None  # {"production_version", "decision", "reason"} against a moved production

    @classmethod
    def from_dict(cls, data: dict) -> "SelectionResult":
        """A saved ``selection`` section (``test`` and ``failed`` repeat the table, so they are not read)."""
        return cls(
            metric=data["metric"],
            task=data.get("task", "single_label"),
            margin=data.get("margin", 0.0),
            production=data.get("production"),
            table=[SelectionRow.from_dict(row) for row in data["table"]],
            winner=data.get("winner"),
            verdict=Verdict(data["decision"]),
            reason=data["reason"],
            production_version=data.get("production_version"),
            recheck=data.get("recheck"),
        )

    def to_dict(self) -> dict:
        """summary.json's ``selection``: ``test`` and ``failed`` are the table's, by candidate."""
        section = {
            "metric": self.metric,
            "task": self.task,
            "margin": self.margin,
            "production": self.production,
            "table": [row.to_dict() for row in self.table],
            "winner": self.winner,
            "decision": self.verdict.value,
            "reason": self.reason,
            "test": {row.candidate: row.test for row in self.scored},
            "failed": self.failed,
        }
        return {**section, **drop_none({"production_version": self.production_version, "recheck": self.recheck})}

    @property
    def scored(self) -> List[SelectionRow]:
        return [row for row in self.table if row.error is None]

    @property
    def failed(self) -> Dict[str, str]:
        """The candidates that could not be scored, with why."""
        return {row.candidate: row.error for row in self.table if row.error is not None}

    def row(self, candidate: str) -> Optional[SelectionRow]:
        return next((row for row in self.table if row.candidate == candidate), None)

    def test(self, candidate: str) -> Optional[dict]:
        """The candidate's test metrics at its decision rule (None when it could not be scored)."""
        row = self.row(candidate)
        return row.test if row is not None and row.error is None else None

    def decision_rule(self, candidate: str) -> Optional[DecisionRule]:
        row = self.row(candidate)
        return row.decision if row is not None else None

    def family(self, candidate: str) -> Optional[str]:
        row = self.row(candidate)
        return row.family if row is not None else None

    @property
    def promotable(self) -> bool:
        """Whether the winner may become production (a re-check against a moved production can say no)."""
        return Verdict((self.recheck or {}).get("decision", self.verdict)) is Verdict.REGISTER

    def overruled(self, production_version: str, again: "SelectionResult") -> "SelectionResult":
        """This result after re-comparing with ``production_version``, which moved after selection."""
        recheck = {"production_version": production_version, "decision": again.verdict.value, "reason": again.reason}
        reason = self.reason
        if again.verdict is not Verdict.REGISTER:
            reason = f"production moved to version {production_version} before promotion: {again.reason}"
        return dataclasses.replace(self, recheck=recheck, reason=reason)


@dataclass
class Registration:
    """What the register stage did: a version registered (or found with the same content), or production kept."""

    verdict: Verdict  # summary.json's registry "decision" when nothing was registered
    reason: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    existing: Optional[bool] = None  # a version with the same content was already registered
    content_sha256: Optional[str] = None
    git_commit: Optional[str] = None
    source: Optional[str] = None
    tags: Optional[dict] = None
    model_ref: Optional["ModelRef"] = None  # the registered copy, what a rollout deploys
    sample_request: Optional[dict] = None
    promoted: Optional[bool] = None  # False: registered, but production moved and now wins

    @classmethod
    def from_dict(cls, data: dict) -> "Registration":
        if data.get("version") is None:
            return cls(verdict=Verdict(data["decision"]), reason=data.get("reason"))

        ref = data.get("model_ref")
        return cls(
            verdict=Verdict.REGISTER,
            model_ref=ModelRef(**ref) if ref else None,
            **{
                key: data.get(key)
                for key in (
                    "reason",
                    "name",
                    "version",
                    "existing",
                    "content_sha256",
                    "git_commit",
                    "source",
                    "tags",
                    "sample_request",
                    "promoted",
                )
            },
        )

    @property
    def registered(self) -> bool:
        return self.version is not None and self.promoted is not False

    def to_dict(self) -> dict:
        if self.version is None:
            return {"decision": self.verdict.value, "reason": self.reason}
        data = {
            "name": self.name,
            "version": self.version,
            "existing": self.existing,
            "content_sha256": self.content_sha256,
            "git_commit": self.git_commit,
            "source": self.source,
            "tags": self.tags,
            "model_ref": self.model_ref.to_dict() if self.model_ref is not None else None,
            "sample_request": self.sample_request,
        }
        if self.promoted is not None:
            data.update(promoted=self.promoted, reason=self.reason)
        return data


@dataclass
class Promotion:
    """A registry's production pointer moved: ``version`` of ``name`` serves now, ``previous`` did before."""

    name: str
    version: str
    previous: Optional[str] = None


@dataclass
class SelectionOutcome:
    """:func:`finetune.registry.registration.select_and_register`'s result on either launcher."""

    selection: SelectionResult
    production: Optional["ModelRef"]  # the production model re-scored, None when there was none
    registration: Registration
