"""An exported AML tree names no folder of the machine that exported it (issue 24, defect 9)."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

from amlemu.recorder import guard_network
from finetune.cli import main as cli


def write_tickets(path: Path, rows: int = 240) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "queue"])
        for i in range(rows):
            queue = ("billing", "shipping", "returns")[i % 3]
            writer.writerow([f"ticket {i} about {queue}, order number {i * 7}", queue])
    return path


def test_no_exported_file_holds_a_machine_path(tmp_path, monkeypatch, capsys):
    guard_network(monkeypatch)
    data = write_tickets(tmp_path / "tickets.csv")
    code = cli.main(
        [
            "compute=a100",
            "dry_run=true",
            "dataset=file",
            f"dataset.path={data}",
            "dataset.text_column=body",
            "dataset.label_column=queue",
            f"output_root={tmp_path / 'out'}",
            "run_name=tickets",
        ]
    )
    assert code == 0, capsys.readouterr().err
    aml = tmp_path / "out" / "tickets" / "aml"
    machine = [str(tmp_path), tempfile.gettempdir().rstrip("/") + "/", str(Path.home()).rstrip("/") + "/"]
    leaks = {}
    for path in aml.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".bin", ".pyc"):
            text = path.read_text(encoding="utf-8", errors="replace")
            found = [prefix for prefix in machine if prefix in text]
            if found:
                leaks[str(path.relative_to(aml))] = found
    assert not leaks, leaks
    record = json.loads((aml / "prepared" / "data.json").read_text())
    assert {info["path"] for info in record["splits"].values()} == {"train.csv", "val.csv", "test.csv"}
    assert record["source"] == "file:tickets.csv"
