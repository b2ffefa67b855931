"""What every report section shares: cell formatting, Markdown tables and the figure folder."""

from __future__ import annotations

import math
from pathlib import Path

FAMILY_DESCRIPTIONS = {
    "hf": "fine-tuned transformer",
    "automl": "local AutoML baseline (FLAML on TF-IDF)",
    "production": "model currently in production, re-scored on this test split",
}
STATUS_STYLE = {"completed": ("tab:blue", "o"), "early_terminated": ("tab:red", "x"), "failed": ("grey", "s")}


def fmt_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt_value(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class Figures:
    """Saves figures under ``run_dir/figures`` and remembers them for the report and summary."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.folder = run_dir / "figures"
        self.paths: list[Path] = []

    def new(self, width: float = 6.4, height: float = 4.0, ncols: int = 1):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(width, height))
        FigureCanvasAgg(figure)
        return figure, figure.subplots(1, ncols, squeeze=False)[0]

    def save(self, figure, name: str, title: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        self.paths.append(path)
        return f"![{title}]({path.relative_to(self.run_dir).as_posix()})"
