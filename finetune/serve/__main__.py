"""``python -m finetune.serve``: serve a model on this machine, in the foreground, until Ctrl-C.

The endpoint is the same :class:`~finetune.serve.endpoint.LocalEndpoint` the pipeline deploys to
(azmlinfsrv running score.py behind a keyed router on 127.0.0.1), brought up through the same rollout,
so what answers here is what answers on AML. User mistakes end as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from finetune.errors import UserError
from finetune.registry.model_registry import resolve
from finetune.serve.endpoint import LocalEndpoint
from finetune.serve.rollout import ModelRef, rollout
from finetune.system.processes import interrupt_on_signals

SERVE_ENDPOINT = "finetune-serve"
# What `python -m finetune` registers for the bundled data (finetune.plan.run_plan.registered_model_name).
DEFAULT_MODEL = "amazon_automotive-sentiment"
DEFAULT_PORT = 8080
# The smoke test of a model folder that stored no sample request of its own: one review of each kind.
SAMPLE_REQUEST = {
    "data": [
        {"text": "Fits perfectly and the install took five minutes."},
        {"text": "Stopped working after two weeks, waste of money."},
    ]
}

EXAMPLES = """\
examples:
  python -m finetune.serve                                   # the registry's production model on :8080
  python -m finetune.serve status --endpoint amazon-automotive-sentiment # what runs (stale records cleaned up)
  python -m finetune.serve stop --endpoint amazon-automotive-sentiment   # stop every process of that endpoint
  python -m finetune.serve --model-version 3 --port 9000     # a given registered version
  python -m finetune.serve --model-dir outputs/run/model     # a candidate folder, no registry
  python -m finetune.serve --endpoint amazon-automotive-sentiment   # the endpoint `python -m finetune` deployed

`python -m finetune` (local compute) rolls the selected model out to the local endpoint named by
endpoint.name (by default the registered model's name: amazon-automotive-sentiment for the bundled data;
create -> smoke test -> traffic ramp -> delete the old deployment), then stops its processes; the
state under outputs/endpoints/<name>/ keeps deployments, traffic and key, and `--endpoint <name>` serves it again as it was left.
"""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.serve",
        description="Serve a sentiment model locally with the AML inference server (azmlinfsrv) behind a "
        "key-authenticated router on 127.0.0.1, in the foreground; Ctrl-C stops every process. "
        "Prints the scoring URI, the key and an example curl.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("start", "stop", "status"),
        default="start",
        help="start (default): serve in the foreground; stop: stop every process of --endpoint "
        f"(default {SERVE_ENDPOINT}, this command's own); status: what runs there",
    )
    source = parser.add_argument_group("what to serve (default: the registry's production model)")
    source.add_argument("--model-name", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    source.add_argument("--model-version", help="registered version (default: the one aliased 'production')")
    source.add_argument(
        "--tracking-uri",
        default="sqlite:///outputs/mlflow.db",
        help="MLflow tracking/registry store (default sqlite:///outputs/mlflow.db)",
    )
    source.add_argument(
        "--model-dir",
        type=Path,
        help="serve this candidate folder (holding candidate.json) instead of a registered model",
    )
    source.add_argument(
        "--endpoint",
        metavar="NAME",
        help="bring up the local endpoint NAME as `python -m finetune` left it (its deployments, traffic and key)",
    )
    parser.add_argument(
        "--endpoints-dir",
        type=Path,
        default=Path("outputs/endpoints"),
        help="where local endpoints keep their state (default outputs/endpoints)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"router port (default {DEFAULT_PORT}, also with --endpoint, so clients keep one URI; 0 = a free port)",
    )
    parser.add_argument(
        "--key",
        help="the key clients send as 'Authorization: Bearer <key>' "
        "(default: generated; with --endpoint, the endpoint's own)",
    )
    return parser


def _local_model(folder: Path) -> ModelRef:
    if not folder.is_dir():
        raise UserError(f"--model-dir {folder} is not a folder")
    registered = folder / "registered.json"
    if registered.is_file():
        recorded = json.loads(registered.read_text(encoding="utf-8"))
        return ModelRef(name=recorded["name"], version=str(recorded["version"]), path=str(folder.resolve()))
    return ModelRef(name=folder.resolve().name, version=None, path=str(folder.resolve()))


def _sample_request(model_dir: Optional[str]) -> dict:
    """The sample the registry stored with the model (real test reviews), else a fixed pair."""
    stored = Path(model_dir) / "sample_request.json" if model_dir else None
    if stored and stored.is_file():
        return json.loads(stored.read_text(encoding="utf-8"))
    return SAMPLE_REQUEST


def bring_up(args: argparse.Namespace):
    """The running endpoint and the request its example curl sends."""
    if args.endpoint:
        if args.model_dir or args.model_version:
            raise UserError("--endpoint serves what that endpoint recorded; drop --model-dir/--model-version")
        if not (args.endpoints_dir / args.endpoint / "state.json").is_file():
            raise UserError(f"no local endpoint {args.endpoint!r} under {args.endpoints_dir}")
        port = DEFAULT_PORT if args.port is None else args.port
        endpoint = LocalEndpoint(args.endpoint, args.endpoints_dir, port=port, key=args.key)
        if endpoint.running():
            raise UserError(f"endpoint {args.endpoint} is already running at {endpoint.scoring_uri}")
        with _stopped_on_failure(endpoint):
            endpoint.start()
        serving = [name for name, percent in endpoint.traffic().items() if percent > 0]
        model_dir = endpoint.deployments()[serving[0]]["model_dir"] if serving else None
        return endpoint, _sample_request(model_dir)

    previous = LocalEndpoint(SERVE_ENDPOINT, args.endpoints_dir)
    if previous.running():
        raise UserError(f"another `python -m finetune.serve` is serving at {previous.scoring_uri}; stop it first")
    previous.delete()
    endpoint = LocalEndpoint(
        SERVE_ENDPOINT, args.endpoints_dir, port=DEFAULT_PORT if args.port is None else args.port, key=args.key
    )
    if args.model_dir:
        model = _local_model(args.model_dir)
    else:
        model = resolve(args.model_name, args.model_version, args.tracking_uri, endpoint.dir / "model")
    sample = _sample_request(model.path)
    with _stopped_on_failure(endpoint):
        endpoint.start()
        rollout(endpoint, "blue", model, sample)
    return endpoint, sample


@contextlib.contextmanager
def _stopped_on_failure(endpoint):
    """Processes started before a failure (or Ctrl-C) would otherwise outlive this command."""
    try:
        yield
    except BaseException:
        endpoint.stop()
        raise


def existing_endpoint(args: argparse.Namespace):
    name = args.endpoint or SERVE_ENDPOINT
    if not (args.endpoints_dir / name / "state.json").is_file():
        raise UserError(f"no local endpoint {name!r} under {args.endpoints_dir}")
    return LocalEndpoint(name, args.endpoints_dir)


def status_lines(status: dict) -> list[str]:
    router = status["router"]
    lines = [
        f"endpoint {status['name']} ({status['state_file']})",
        f"router: running, pid {router['pid']}, {router['scoring_uri']}" if router["running"] else "router: stopped",
    ]
    for name, deployment in status["deployments"].items():
        model = deployment["model"] or {}
        state = f"running, pid {deployment['pid']}" if deployment["running"] else "stopped"
        lines.append(
            f"deployment {name}: {state}, {deployment['traffic']}% traffic, "
            f"{model.get('name')} version {model.get('version')}"
        )
    for name, starting in status["starting"].items():
        lines.append(f"deployment {name}: starting, pid {starting['pid']} (started by pid {starting['by']})")
    lines += [f"recovered: {note}" for note in status["recovered"]]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.action != "start":
        try:
            endpoint = existing_endpoint(args)
            if args.action == "stop":
                endpoint.stop()
            print("\n".join(status_lines(endpoint.status())))
            return 0
        except UserError as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return error.exit_code
    interrupt_on_signals()
    endpoint = None
    try:
        endpoint, sample = bring_up(args)
        uri, key = endpoint.scoring_uri, endpoint.key
        for name, record in endpoint.deployments().items():
            model = ModelRef(**record["model"])
            print(f"deployment {name} ({endpoint.traffic()[name]}%): {model} from {model.path}")
        # The key appears once, as a shell variable the example (and the README's curl) uses.
        print(
            f"scoring URI: {uri}\nexport KEY={shlex.quote(key)}\n"
            f"curl -X POST {uri} -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(sample))}\nCtrl-C stops it.",
            flush=True,
        )
        while endpoint.running():
            time.sleep(1)
        raise UserError(f"endpoint {endpoint.name} stopped unexpectedly; see the logs under {endpoint.dir}")
    except KeyboardInterrupt:
        return 0
    except UserError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    finally:
        if endpoint is not None:
            endpoint.stop()


if __name__ == "__main__":
    sys.exit(main())
