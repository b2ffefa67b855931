"""The Trainer callbacks of one training: what it records (evaluations, train losses, throughput), when it
stops (a NaN loss, a sweep's prune decision) and when it checkpoints. Each class is defined inside the function
that builds it, so importing this module does not import transformers.
"""

from __future__ import annotations

import math
from pathlib import Path

from finetune.train.checkpoints import mark_complete


def observer(args, checkpoint_dir: Path, first_process: bool, tracking, reporter):
    """Renames eval_* to val_*, logs to MLflow, reports to the sweep, stops on NaN or a prune decision, adds
    step-based checkpoints and marks each checkpoint complete; keeps what it saw for result.json."""
    import torch
    from transformers import TrainerCallback

    class Observer(TrainerCallback):
        def __init__(self):
            self.evaluations: list = []
            self.train_losses: list = []
            self.status, self.reason = "completed", None

        def on_step_end(self, _args, control_state, control, **kwargs):
            every = args.checkpoint_every_steps
            if every > 0 and control_state.global_step % every == 0:
                control.should_save = True

        def on_save(self, _args, control_state, control, **kwargs):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()  # every process has written its part (its RNG state) by now
            folder = checkpoint_dir / f"checkpoint-{control_state.global_step}"
            if first_process and folder.is_dir():
                mark_complete(folder, control_state.global_step)

        def on_log(self, _args, control_state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None:
                if not math.isfinite(loss):
                    self.status = "failed"
                    self.reason = f"training loss became {loss} at step {control_state.global_step}"
                    control.should_training_stop = True
                tracking.log({"train_loss": loss}, control_state.global_step)
                self.train_losses.append(
                    {"step": control_state.global_step, "epoch": control_state.epoch, "loss": loss}
                )

        def on_evaluate(self, _args, control_state, control, metrics=None, **kwargs):
            values = {
                f"val_{k[len('eval_') :]}": v
                for k, v in (metrics or {}).items()
                if k.startswith("eval_") and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))
            }
            self.evaluations.append({"step": control_state.global_step, "epoch": control_state.epoch, **values})
            tracking.log(values, control_state.global_step)
            value = values.get(args.primary_metric)
            prune = reporter is not None and value is not None and reporter.report(value, len(self.evaluations))
            if decided_by_main(prune):
                self.status = "pruned"
                self.reason = f"early-terminated by the sweep policy at evaluation {len(self.evaluations)}"
                control.should_training_stop = True
                control.should_save = False

    return Observer()


def decided_by_main(flag: bool) -> bool:
    """The first process's decision, on every process: they must stop at the same step or DDP hangs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    decision = [flag]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


def throughput_meter(samples_per_step: int, tokens_per_sample: float):
    """A Trainer callback timing the training steps of this process, evaluation and checkpoint writing excluded."""
    import time

    from transformers import TrainerCallback

    class ThroughputMeter(TrainerCallback):
        def __init__(self):
            self.start = self.last = None
            self.first_step = self.steps = 0
            self.excluded = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self.last = time.perf_counter()
            self.first_step = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            self.last = time.perf_counter()
            self.steps = state.global_step - self.first_step

        def _exclude(self):
            now = time.perf_counter()
            if self.last is not None:
                self.excluded += now - self.last
            self.last = now

        def on_evaluate(self, args, state, control, **kwargs):
            self._exclude()

        def on_save(self, args, state, control, **kwargs):
            self._exclude()

        def figures(self) -> dict:
            seconds = (self.last - self.start - self.excluded) if self.start is not None else 0.0
            if seconds <= 0 or not self.steps:
                return {"train_samples_per_s": None, "train_tokens_per_s": None, "train_seconds": seconds}
            samples = self.steps * samples_per_step
            return {
                "train_samples_per_s": samples / seconds,
                "train_tokens_per_s": samples * tokens_per_sample / seconds,
                "train_seconds": seconds,
            }

    return ThroughputMeter()
