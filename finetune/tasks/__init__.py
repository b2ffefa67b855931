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
