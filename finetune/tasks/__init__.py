"""One object per task (single-label, multi-label, NER) holding what differs between tasks, asked by the stages:
data targets, model head and loss, metrics and the primary metric, the baseline candidate, test scoring, the
response shape and the AML AutoML job. A new task is one module here plus its reader."""

from __future__ import annotations

from finetune.errors import UserError
from finetune.tasks.multi_label import MULTI_LABEL_TASK
from finetune.tasks.ner import NER_TASK
from finetune.tasks.single_label import SINGLE_LABEL_TASK

TASK_OBJECTS = {task.name: task for task in (SINGLE_LABEL_TASK, MULTI_LABEL_TASK, NER_TASK)}


def task_of(name: str):
    """The task object of a decided task (``auto`` is decided by the plan or the data stage first)."""
    try:
        return TASK_OBJECTS[name]
    except KeyError:
        raise UserError(f"task {name!r}: unknown; use one of {', '.join(TASK_OBJECTS)}") from None


def with_task_metrics(plan):
    """``plan`` with its task's primary and selection metrics where the shipped (classification) defaults stand:
    ``dataset.task=ner`` alone must train for entity F1 and select by it. A metric the user set is kept (and
    checked against the task by the plan checks)."""
    import dataclasses

    task = TASK_OBJECTS.get(plan.dataset.task)
    if task is None or task.name == SINGLE_LABEL_TASK.name:
        return plan
    search, select = plan.search, plan.select
    if search.primary_metric == SINGLE_LABEL_TASK.primary_metric:
        search = dataclasses.replace(search, primary_metric=task.primary_metric)
    if select.metric == SINGLE_LABEL_TASK.select_metric:
        select = dataclasses.replace(select, metric=task.select_metric)
    return dataclasses.replace(plan, search=search, select=select)
