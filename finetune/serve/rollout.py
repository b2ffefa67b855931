"""The one rollout algorithm, over an endpoint interface that a local and an AML implementation share.

create the new deployment -> smoke-test it directly -> shift traffic along a ramp, checking the error
rate at each step -> delete the old deployments. Any failure before the old deployments are deleted
restores the traffic as it was, deletes the new deployment and raises :class:`RolloutError`, so
production keeps serving the model it served before.

Standard library only: the registry and both launchers import :class:`ModelRef` from here cheaply.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence

from finetune.errors import UserError


@dataclass
class ModelRef:
    """A model version to deploy: its registry name and version (None outside a registry) and its folder."""

    name: str
    version: Optional[str]
    path: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name} v{self.version}"


class Endpoint(Protocol):
    """What :func:`rollout` needs from an endpoint (local: LocalEndpoint; AML: a managed online endpoint).

    ``traffic()`` lists every deployment, 0% ones included. ``invoke`` returns the parsed response and
    raises :class:`InvokeError` for an HTTP error; with ``deployment`` it bypasses the traffic split
    (AML's ``azureml-model-deployment`` header). ``set_traffic`` takes weights over existing deployments
    summing to 100 (or 0: nothing served). ``delete_deployment`` of a deployment that does not exist does
    nothing, so a rollback can always call it.
    """

    name: str

    def traffic(self) -> Dict[str, int]: ...

    def create_deployment(self, deployment: str, model: ModelRef) -> None: ...

    def invoke(self, body: dict, deployment: Optional[str] = None) -> dict: ...

    def set_traffic(self, weights: Dict[str, int]) -> None: ...

    def delete_deployment(self, deployment: str) -> None: ...


class RolloutError(UserError):
    """The rollout failed; the endpoint serves what it served before."""


class InvokeError(UserError):
    """A scoring call answered with an HTTP error (or none at all); ``status`` is 0 when nothing answered."""

    def __init__(self, message: str, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def prediction_problems(request: dict, response: Any) -> List[str]:
    """Why ``response`` is not a well-formed answer to ``request`` (empty when it is)."""
    if not isinstance(response, dict) or not isinstance(response.get("predictions"), list):
        return ['the response has no "predictions" list']
    expected, predictions = len(request.get("data", [])), response["predictions"]
    problems = []
    if len(predictions) != expected:
        problems.append(f"{len(predictions)} predictions for {expected} items")
    for index, prediction in enumerate(predictions):
        if isinstance(prediction, dict) and "entities" in prediction:
            problems += entity_problems(index, prediction["entities"], request["data"][index].get("text", ""))
            continue
        probabilities = prediction.get("probabilities") if isinstance(prediction, dict) else None
        if not isinstance(probabilities, dict) or not probabilities:
            problems.append(f"prediction {index} has no probabilities")
            continue
        multi_label = "labels" in prediction
        decided = prediction["labels"] if multi_label else [prediction.get("label")]
        if not isinstance(decided, list) or any(label not in probabilities for label in decided):
            problems.append(
                f"prediction {index}: label{'s' if multi_label else ''} "
                f"{prediction.get('labels' if multi_label else 'label')!r} is not one of its probabilities"
            )
        try:
            values = [float(p) for p in probabilities.values()]
        except (TypeError, ValueError):
            problems.append(f"prediction {index}: probabilities are not numbers")
            continue
        # Multi-label probabilities are one sigmoid per label: each in [0, 1], no sum to check.
        if multi_label and not all(0.0 <= p <= 1.0 for p in values):
            problems.append(f"prediction {index}: a label probability is outside [0, 1]")
        elif not multi_label and not math.isclose(sum(values), 1.0, abs_tol=1e-3):
            problems.append(f"prediction {index}: probabilities sum to {sum(values):.4f}, not 1")
    return problems


def entity_problems(index: int, entities: Any, text: str) -> List[str]:
    """Why an NER answer is malformed: each entity a label, a score in [0, 1] and offsets that cut its ``text``
    out of the text sent."""
    if not isinstance(entities, list):
        return [f"prediction {index}: entities is not a list"]
    problems = []
    for entity in entities:
        try:
            start, end, score = int(entity["start"]), int(entity["end"]), float(entity["score"])
            if not (
                0 <= start < end <= len(text)
                and text[start:end] == entity["text"]
                and entity["label"]
                and 0.0 <= score <= 1.0
            ):
                problems.append(f"prediction {index}: entity {entity!r} does not match the text sent")
        except (TypeError, KeyError, ValueError):
            problems.append(f"prediction {index}: entity {entity!r} lacks text, label, start, end or score")
    return problems


def split_traffic(old: Dict[str, int], new_deployment: str, percent: int) -> Dict[str, int]:
    """``percent`` to the new deployment, the rest shared by the old ones in their current proportions."""
    rest, total = 100 - percent, sum(old.values())
    exact = {name: rest * share / total for name, share in old.items()}
    weights = {name: math.floor(value) for name, value in exact.items()}
    # Largest remainders get the leftover points so the weights still sum to exactly 100.
    leftover = rest - sum(weights.values())
    for name in sorted(exact, key=lambda n: exact[n] - weights[n], reverse=True)[:leftover]:
        weights[name] += 1
    weights[new_deployment] = percent
    return weights


def check_ramp(ramp: Sequence[int]) -> List[int]:
    steps = [int(step) for step in ramp]
    if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise RolloutError(f"rollout ramp {list(ramp)} must be increasing percentages in 1..100 ending at 100")
    return steps


@dataclass
class RolloutResult:
    endpoint: str
    deployment: str
    model: ModelRef
    previous_traffic: Dict[str, int]
    traffic: Dict[str, int]
    ramp: List[int]
    steps: List[dict] = field(default_factory=list)
    deleted: List[str] = field(default_factory=list)
    smoke_latency_ms: float = 0.0
    smoke_response: Any = None
    timings: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    scoring_uri: Optional[str] = None

    def to_dict(self) -> dict:
        """The ``rollout`` section of summary.json."""
        return {
            "status": "succeeded",
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "model": self.model.to_dict(),
            "scoring_uri": self.scoring_uri,
            "previous_traffic": dict(self.previous_traffic),
            "traffic": dict(self.traffic),
            "ramp": list(self.ramp),
            "steps": list(self.steps),
            "deleted": list(self.deleted),
            "smoke_test": {"latency_ms": round(self.smoke_latency_ms, 1), "response": self.smoke_response},
            "timings": {name: round(seconds, 3) for name, seconds in self.timings.items()},
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RolloutResult":
        """A saved ``rollout`` section (a succeeded one: a failed rollout raised instead of returning)."""
        smoke = data.get("smoke_test") or {}
        return cls(
            endpoint=data["endpoint"],
            deployment=data["deployment"],
            model=ModelRef(**data["model"]),
            previous_traffic=data.get("previous_traffic") or {},
            traffic=data.get("traffic") or {},
            ramp=data.get("ramp") or [],
            steps=data.get("steps") or [],
            deleted=data.get("deleted") or [],
            smoke_latency_ms=smoke.get("latency_ms", 0.0),
            smoke_response=smoke.get("response"),
            timings=data.get("timings") or {},
            warnings=data.get("warnings") or [],
            scoring_uri=data.get("scoring_uri"),
        )


@dataclass
class DeploymentResult:
    """The local launcher's deploy stage: the rollout, and what serves the endpoint after it (summary.json's
    ``rollout``: the rollout's section with these keys added)."""

    rollout: RolloutResult
    target: str  # endpoint.target: local
    state_file: str  # the endpoint's recorded deployments
    running: bool  # False: the processes stopped with the run; ``serve_command`` starts them again
    serve_command: str

    @classmethod
    def from_dict(cls, data: dict) -> "DeploymentResult":
        # "kind": the key's name in summary.json before it became endpoint.target's.
        return cls(
            rollout=RolloutResult.from_dict(data),
            target=data.get("target", data.get("kind")),
            state_file=data["state_file"],
            running=data["running"],
            serve_command=data["serve_command"],
        )

    def to_dict(self) -> dict:
        return {
            **self.rollout.to_dict(),
            "target": self.target,
            "state_file": self.state_file,
            "running": self.running,
            "serve_command": self.serve_command,
        }


def rollout(
    endpoint: Endpoint,
    new_deployment: str,
    model: ModelRef,
    sample_request: dict,
    ramp: Sequence[int] = (100,),
    max_error_rate: float = 0.0,
    step_requests: int = 5,
) -> RolloutResult:
    """Deploy ``model`` as ``new_deployment`` and move all traffic to it, or leave the endpoint as it was.

    At each ramp step ``step_requests`` calls go through the endpoint's traffic split; more than
    ``max_error_rate`` of them failing (an HTTP error or a malformed prediction) aborts the rollout.
    A first deployment (no deployment takes traffic) takes 100% at once: there is nothing to compare with.
    """
    steps = check_ramp(ramp)
    started = time.perf_counter()
    timings: Dict[str, float] = {}
    previous = dict(endpoint.traffic())
    if new_deployment in previous:
        raise RolloutError(f"endpoint {endpoint.name} already has a deployment named {new_deployment!r}")
    serving = {name: percent for name, percent in previous.items() if percent > 0}
    result = RolloutResult(
        endpoint=endpoint.name,
        deployment=new_deployment,
        model=model,
        previous_traffic=previous,
        traffic=previous,
        ramp=steps if serving else [100],
    )

    def abort(reason: str) -> RolloutError:
        """Restore the traffic and delete the new deployment; the error to raise says what happened."""
        cleanup = []
        try:
            endpoint.set_traffic(previous)
        except Exception as problem:  # noqa: BLE001 - reported in the message, the rollout error wins
            cleanup.append(f"restoring traffic failed: {problem}")
        try:
            endpoint.delete_deployment(new_deployment)
        except Exception as problem:  # noqa: BLE001
            cleanup.append(f"deleting {new_deployment} failed: {problem}")
        kept = ", ".join(f"{name} {percent}%" for name, percent in serving.items()) or "no traffic"
        message = f"rollout of {model} to {endpoint.name}/{new_deployment} failed: {reason}; traffic kept at {kept}"
        if cleanup:
            message += " (" + "; ".join(cleanup) + ")"
        return RolloutError(message)

    phase = "creating the deployment"
    try:
        endpoint.create_deployment(new_deployment, model)
        timings["create_s"] = time.perf_counter() - started

        phase, smoke_started = "smoke test", time.perf_counter()
        response = endpoint.invoke(sample_request, deployment=new_deployment)
        result.smoke_latency_ms = (time.perf_counter() - smoke_started) * 1e3
        result.smoke_response = response
        problems = prediction_problems(sample_request, response)
        if problems:
            raise RolloutError("smoke test got malformed predictions: " + "; ".join(problems))
        timings["smoke_s"] = time.perf_counter() - smoke_started

        phase, shift_started = "shifting traffic", time.perf_counter()
        if not serving:
            endpoint.set_traffic({**{name: 0 for name in previous}, new_deployment: 100})
        else:
            for percent in result.ramp:
                endpoint.set_traffic(split_traffic(serving, new_deployment, percent))
                result.steps.append(_check_step(endpoint, sample_request, percent, step_requests, max_error_rate))
        timings["shift_s"] = time.perf_counter() - shift_started
    except RolloutError as problem:
        raise abort(str(problem)) from problem
    except KeyboardInterrupt:
        abort(f"interrupted ({phase})")
        raise
    except Exception as problem:
        raise abort(f"{phase} failed: {' '.join(str(problem).split())}") from problem

    delete_started = time.perf_counter()
    # Old deployments are gone from the traffic now; one that will not delete is a leftover to clean up,
    # not a reason to move production back to it.
    for name in previous:
        try:
            endpoint.delete_deployment(name)
            result.deleted.append(name)
        except Exception as problem:  # noqa: BLE001
            result.warnings.append(f"deleting old deployment {name} failed: {problem}")
    timings["delete_s"] = time.perf_counter() - delete_started
    timings["total_s"] = time.perf_counter() - started
    result.timings = timings
    result.traffic = dict(endpoint.traffic())
    result.scoring_uri = getattr(endpoint, "scoring_uri", None)
    return result


def _check_step(endpoint: Endpoint, sample_request: dict, percent: int, requests: int, max_error_rate: float) -> dict:
    started, errors, reasons = time.perf_counter(), 0, []
    for _ in range(requests):
        try:
            problems = prediction_problems(sample_request, endpoint.invoke(sample_request))
        except Exception as problem:  # noqa: BLE001 - any failed call counts as an error
            problems = [str(problem)]
        if problems:
            errors += 1
            reasons.append(problems[0])
    rate = errors / requests if requests else 0.0
    step = {
        "percent": percent,
        "requests": requests,
        "errors": errors,
        "error_rate": rate,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if rate > max_error_rate:
        raise RolloutError(f"error rate {rate:.0%} at {percent}% traffic exceeds {max_error_rate:.0%} ({reasons[0]})")
    return step
