"""``report.md`` and its plots, from ``summary.json`` and the files it points to.

The report is for a person deciding whether to trust the model: what data it saw, how the sweep went,
how training converged, how every candidate did on the same test split and why one was chosen, and
whether the endpoint answered. Each section appears only when its stage ran and left its data, so a
minimal run (no sweep, no AutoML, no endpoint) still gets a valid report. Plots use matplotlib's Agg
canvas directly (no pyplot state, no display needed) and go to ``<run_dir>/figures/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List

from finetune.report.budget import budget_section
from finetune.report.common import Figures
from finetune.report.data import data_section
from finetune.report.selection import registry_section, rollout_section, selection_section
from finetune.report.training import learning_check_section, learning_section, sweep_section, training_section

if TYPE_CHECKING:
    from finetune.plan.summary import RunSummary


def run_section(summary: "RunSummary") -> list[str]:
    run = summary.run
    lines = [f"# Run {run.get('name', '')}".rstrip(), ""]
    facts = [
        ("launcher", run.get("launcher")),
        ("started", run.get("started")),
        ("finished", run.get("finished")),
        ("duration", f"{run['duration_s']:.0f} s" if run.get("duration_s") is not None else None),
        ("stages", " → ".join(run.get("stages", [])) or None),
        ("run directory", run.get("run_dir")),
    ]
    training = summary.training or {}
    splits = summary.data.splits if summary.data is not None else {}
    hyperparameters = training.get("hyperparameters") or {}
    facts += [
        ("base model", f"`{training['base_model']}`" if training.get("base_model") else None),
        (
            "hyperparameters of the kept model",
            ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in hyperparameters.items()) or None,
        ),
        ("data", ", ".join(f"{name} {split.get('rows')} rows" for name, split in splits.items()) or None),
    ]
    lines += [f"- **{key}**: {value}" for key, value in facts if value]
    return lines


@dataclass
class Report:
    """What the report stage wrote: the report and its figures (summary.json's ``figures``)."""

    path: Path
    figures: List[Path]


def write_report(run_dir: Path, summary: "RunSummary", task=None) -> Report:
    """Write ``run_dir/report.md``, ``report.html`` and ``run_dir/figures/*.png`` from the run's results (a finished
    run's: ``RunSummary.load(run_dir)``).

    ``task``, the run's task object (:mod:`finetune.tasks`), names the data and candidate sections (NER's are about
    entities, not classes): a task brings its own without an edit here. Without one, the classifiers' sections."""
    run_dir = Path(run_dir)
    figures = Figures(run_dir)
    lines = [
        *run_section(summary),
        "",
        *(task.data_report(summary, figures, run_dir) if task else data_section(summary, figures)),
        *sweep_section(summary, figures),
        *learning_section(summary, figures),
        *learning_check_section(summary),
        *training_section(summary),
        *(task.selection_report(summary, figures, run_dir) if task else selection_section(summary, figures)),
        *registry_section(summary),
        *rollout_section(summary),
        *budget_section(summary, figures),
    ]
    path = run_dir / "report.md"
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    path.write_text(text, encoding="utf-8")
    write_html(text, run_dir, run_dir / "report.html")
    return Report(path=path, figures=list(figures.paths))


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head><body>
{body}
</body></html>
"""


def write_html(markdown_text: str, run_dir: Path, path: Path) -> Path:
    """The report as one self-contained HTML page: the Markdown rendered, every figure inlined as base64."""
    import base64
    import html
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline(match):
        image = run_dir / html.unescape(match.group(1))
        if not image.is_file():
            return match.group(0)
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{encoded}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    title = next((line[2:] for line in markdown_text.splitlines() if line.startswith("# ")), "report")
    path.write_text(HTML_PAGE.format(title=html.escape(title), body=body), encoding="utf-8")
    return path
