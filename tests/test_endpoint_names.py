"""Each registered model (dataset and task) gets its own endpoint, on AML and locally (issue 24, defect 2)."""

from __future__ import annotations

import pytest
import yaml

from amlemu.recorder import build, guard_network
from finetune.cli import main as cli
from finetune.serve.endpoint_names import endpoint_name

# AML's rule, written out here rather than imported: 3-32 characters, a letter first, letters/digits/'-', not '-' last.
VALID = r"[a-z][-a-z0-9]{1,30}[a-z0-9]"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


def exported_endpoints(run_dir) -> tuple:
    aml = run_dir / "aml"
    endpoint = yaml.safe_load((aml / "endpoint.yml").read_text())["name"]
    deployment = yaml.safe_load((aml / "deployment.yml").read_text())["endpoint_name"]
    return endpoint, deployment


def test_aml_dry_runs_of_two_datasets_name_two_endpoints(tmp_path, capsys):
    import re

    names = {}
    # goemotions_sample is a published split: sampled, val and test could hold labels train has not.
    for dataset, sample in (("amazon_automotive", ["dataset.sample=400"]), ("goemotions_sample", [])):
        code = cli.main(
            [
                "compute=a100",
                "dry_run=true",
                f"dataset={dataset}",
                *sample,
                f"output_root={tmp_path}",
                f"run_name={dataset}",
            ]
        )
        assert code == 0, capsys.readouterr().err
        endpoint, deployment = exported_endpoints(tmp_path / dataset)
        assert endpoint == deployment and re.fullmatch(VALID, endpoint), endpoint
        names[dataset] = endpoint
    assert names["amazon_automotive"] == "amazon-automotive-sentiment"
    assert names["goemotions_sample"] != names["amazon_automotive"]


def test_local_runs_of_two_datasets_use_two_local_endpoints(tmp_path):
    first = build(["dataset=amazon_automotive"], tmp_path)
    second = build(["dataset=goemotions_sample"], tmp_path)
    assert first.endpoint.target == second.endpoint.target == "local"
    assert first.endpoint.name == "amazon-automotive-sentiment"
    assert second.endpoint.name not in ("amazon-automotive-sentiment", None)


def test_long_model_names_get_valid_distinct_endpoint_names(tmp_path):
    import re

    long_a = "customer_support_tickets_2026-priority"
    long_b = "customer_support_tickets_2026-queue"
    a, b = endpoint_name(long_a), endpoint_name(long_b)
    assert a != b and a == endpoint_name(long_a)
    assert all(re.fullmatch(VALID, name) for name in (a, b)), (a, b)
    assert a.startswith("customer-support-tickets")
    for name in ("7-eleven-sentiment", "__x", "ab"):
        assert re.fullmatch(VALID, endpoint_name(name)), endpoint_name(name)
    # The derived name passes the AML plan check that an explicit endpoint.name must pass.
    plan = build(["compute=a100", "dry_run=true", f"select.registered_model_name={long_a}"], tmp_path)
    assert plan.endpoint.name == a


def test_endpoint_name_override_wins(tmp_path):
    plan = build(["compute=a100", "dry_run=true", "endpoint.name=my-endpoint"], tmp_path)
    assert plan.endpoint.name == "my-endpoint"
    assert build(["endpoint.name=mine"], tmp_path).endpoint.name == "mine"
