"""The run plan: a composed config resolved into plain, printable, serialisable data.

:func:`finetune.plan.build.build_plan` makes it (resolving what composition leaves open and checking
everything at once); launchers receive only a :class:`RunPlan`. This module imports nothing of the stages,
so every stage and launcher can name the type without an import cycle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from finetune.config.schema import (
    AutomlConfig,
    BudgetConfig,
    ComputeConfig,
    DatasetConfig,
    EndpointConfig,
    ModelConfig,
    SearchConfig,
    SelectConfig,
    SubmitConfig,
    TrackingConfig,
    TrainConfig,
    WorkspaceConfig,
)
from finetune.plan.budget import Estimate


@dataclass
class RunPlan:
    name: str
    run_dir: str
    launcher: str  # local | azureml
    stages: List[str]
    dataset: DatasetConfig
    model: ModelConfig
    search: SearchConfig
    compute: ComputeConfig
    automl: AutomlConfig
    endpoint: EndpointConfig
    workspace: WorkspaceConfig
    train: TrainConfig
    select: SelectConfig
    tracking: TrackingConfig
    submit: SubmitConfig
    seed: int = 0
    dry_run: bool = False
    overrides: List[str] = field(default_factory=list)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    # What the planner chose to fit the budget and what it expects each stage to take (None: no budget).
    estimate: Optional[Estimate] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self) -> None:
        """Write plan.yaml and plan.json into the run directory."""
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.yaml").write_text(self.to_yaml())
        (run_dir / "plan.json").write_text(json.dumps(self.to_dict(), indent=2))
