"""Hardware-aware training defaults: what runs fast on this device, each switch a ``compute.*`` setting.

The figures behind every default (throughput on GPUs and CPUs, bf16 quality, batch-size knees) and the commands
that reproduce them are in docs/performance.md; ``scripts/bench_train.py`` re-measures them on any card.

GPU defaults
- precision ``auto``: bf16 autocast on cards with native bf16 (compute capability >= 8.0), else fp16 autocast
  with dynamic loss scaling; master weights and Adam moments stay fp32. TF32 for the matmuls left in fp32.
- fused AdamW (``compute.optim``) and SDPA attention (``compute.attn_implementation``).
- length-grouped batches: review lengths are skewed, so a random batch pads to its longest member.
- padding to a multiple of 8 (tensor-core tiles), or of 64 with torch.compile, so only a couple of sequence
  lengths reach the compiler (without that bucketing every new shape recompiles, slower than no compile).
- torch.compile ``auto``: on where its gain was measured (or the card shares that card's compiler path), off
  elsewhere: :data:`COMPILE_BY_CAPABILITY`, keyed by compute capability.
- 2 persistent dataloader workers per process and pinned memory, so host work overlaps the GPU's.

CPU defaults
- fp32 unless the CPU has native bf16 (AVX512-BF16 or AMX on x86, the BF16 extension on Arm): emulated bf16 is
  slower and changes numerics for nothing; native bf16 is faster at the same quality.
- threads: the cores free right now (``free_cores``): a busy core makes an extra thread a straggler.
- length-grouped batches; no padding multiple, no dataloader workers (they compete with the math threads), no
  torch.compile (compilation dominates a CPU fine-tune).

Batch size (``compute.auto_batch_size``): on a GPU, the largest power of two up to ``compute.max_batch_size``
whose forward/backward probe at ``max_length`` plus Adam's fp32 moments fits 85% of the card's memory, and that
keeps :data:`MIN_STEPS_PER_EPOCH` steps an epoch (never below the model's own batch). On a CPU memory is not the
limit and a larger batch is not faster, so the model's batch is kept. A resumed run keeps its batch and rate.

Learning-rate rule (``compute.lr_scaling``): the model config's rate belongs to its batch size. When the hardware
changes the global batch (auto batch size, several GPUs) the rate is scaled by ``sqrt(global / reference)``
(Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"); ``linear`` (Goyal et
al., 2017, for SGD) and ``none`` are available. Warmup stays a fraction of the steps.

Several GPUs on one machine (``compute.gpus=N``): the same entry point under ``accelerate launch``
(:func:`finetune.train.process.launch_command`); each DDP process takes a per-device batch, so the global
batch and the rate grow with N. The Trainer's ``average_tokens_across_devices`` is off: it multiplies the loss by
the process count for models that normalise by a global token count, which sequence classifiers do not.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from finetune.errors import UserError
from finetune.system import cpu

PAD_MULTIPLE = 8
COMPILE_PAD_MULTIPLE = 64
GPU_DATALOADER_WORKERS = 2
MIN_STEPS_PER_EPOCH = 50
MEMORY_HEADROOM = 0.85

# torch.compile default per CUDA compute capability: (on, why). Cards not listed (V100 sm70, T4 sm75, A10/L4/L40S
# sm86/sm89, Blackwell sm100/sm120) default to off: no measured gain there, and compilation is a fixed cost.
COMPILE_BY_CAPABILITY: Dict[Tuple[int, int], Tuple[bool, str]] = {
    (9, 0): (
        True,
        "sm90 (H100/H200): measured on H200 with padding to 64, 3,075 samples/s at batch 128 against "
        "965 without compile at batch 64",
    ),
    (8, 0): (
        True,
        "sm80 (A100): the same Inductor/Triton bf16 tensor-core path as the measured sm90; expected "
        "positive with bucketing (confirm with scripts/bench_train.py)",
    ),
}
COMPILE_OFF_REASON = (
    "no measured gain on {card}: compile time and recompiles are a cost without a known payoff "
    "(compute.torch_compile=on to try; scripts/bench_train.py to measure)"
)


# ---------------------------------------------------------------------------------------------- hardware


@dataclass
class Hardware:
    """What the decisions depend on; :func:`detect` fills it, tests build it by hand."""

    device: str  # cpu | cuda
    name: str
    capability: Optional[Tuple[int, int]] = None
    native_bf16: bool = False
    free_cores: int = 1
    world_size: int = 1


def free_cores() -> int:
    """Cores this process may use, minus the ones busy right now (a loaded core makes 2 threads collapse)."""
    cores = cpu.cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, cores - busy)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX (x86) or the BF16 extension (Arm): bf16 matmuls in hardware rather than emulated."""
    import torch

    try:
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True
    except AttributeError:
        pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {
        word
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for word in line.split(":", 1)[-1].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def detect(device: str = "auto") -> Hardware:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is visible")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        index = local_rank() % torch.cuda.device_count()
        torch.cuda.set_device(index)
        props = torch.cuda.get_device_properties(index)
        return Hardware(
            device="cuda",
            name=props.name,
            capability=(props.major, props.minor),
            native_bf16=torch.cuda.is_bf16_supported(including_emulation=False),
            free_cores=free_cores(),
            world_size=world_size(),
        )
    return Hardware(
        device="cpu",
        name=cpu_name(),
        native_bf16=cpu_has_native_bf16(),
        free_cores=free_cores(),
        world_size=world_size(),
    )


# ---------------------------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """The switches chosen for one training process; ``to_dict()`` is result.json's ``runtime`` section."""

    device: str
    device_name: str
    capability: Optional[str]
    precision: str
    threads: int
    tf32: bool
    optim: str
    attn_implementation: Optional[str]
    group_by_length: bool
    pad_to_multiple_of: Optional[int]
    torch_compile: bool
    compile_reason: str
    dataloader_workers: int
    world_size: int
    notes: List[str] = field(default_factory=list)

    def trainer_kwargs(self) -> dict:
        """TrainingArguments for these switches."""
        kwargs = {
            "use_cpu": self.device == "cpu",
            "train_sampling_strategy": "group_by_length" if self.group_by_length else "random",
            "dataloader_num_workers": self.dataloader_workers,
            "dataloader_persistent_workers": self.dataloader_workers > 0,
            "dataloader_pin_memory": self.device == "cuda",
            "optim": self.optim,
            "torch_compile": self.torch_compile,
            # On (the Trainer's default), the loss is multiplied by the process count on the assumption that the
            # model divides by the global token count; sequence classifiers (BERT's plain mean cross-entropy) do
            # not, so under DDP gradients, train loss and val_loss came out world-size times too large
            # (transformers#35078; 1.375 against 0.686 with 2 processes here).
            "average_tokens_across_devices": False,
        }
        if self.precision in ("bf16", "fp16"):
            kwargs[self.precision] = True
        if self.device == "cuda":
            # Explicit either way: TF32 is process-wide state that an earlier run (or torch.compile) may have set.
            kwargs["tf32"] = self.tf32
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


def choose_runtime(args, hardware: Optional[Hardware] = None) -> Runtime:
    """The runtime for ``args`` (a TrainArgs) on ``hardware`` (detected when not given)."""
    return decide(args, hardware or detect(args.device))


def auto_precision(hw: Hardware) -> str:
    """``precision=auto``: bf16 where the device has it natively, else fp16 autocast on a GPU, else fp32."""
    return "bf16" if hw.native_bf16 else ("fp16" if hw.device == "cuda" else "fp32")


def decide(args, hw: Hardware) -> Runtime:
    gpu = hw.device == "cuda"
    notes: List[str] = []
    card = f"{hw.name} (sm{hw.capability[0]}{hw.capability[1]})" if hw.capability else hw.name

    precision = args.precision
    if precision == "auto":
        precision = auto_precision(hw)
    elif precision == "fp16" and not gpu:
        raise UserError("--precision fp16 needs a GPU (fp16 autocast with loss scaling); use fp32 or bf16")
    elif precision == "bf16" and not hw.native_bf16:
        notes.append(f"bf16 requested on {card} without native bf16: emulated, expect it slower than fp32")

    if args.torch_compile == "auto":
        if not gpu:
            compile_on, reason = False, "CPU: compile time dominates short CPU runs and no gain was measured"
        else:
            compile_on, reason = COMPILE_BY_CAPABILITY.get(hw.capability, (False, COMPILE_OFF_REASON.format(card=card)))
        if compile_on and 0 < args.pad_to_multiple_of < COMPILE_PAD_MULTIPLE:
            compile_on = False
            reason = (
                f"pad_to_multiple_of={args.pad_to_multiple_of} leaves too many shapes: recompiles dominated "
                "without bucketing (296 vs 965 samples/s on H200)"
            )
    else:
        compile_on, reason = args.torch_compile == "on", f"compute.torch_compile={args.torch_compile}"
        if compile_on and 0 < args.pad_to_multiple_of < COMPILE_PAD_MULTIPLE:
            notes.append(f"torch.compile with pad_to_multiple_of={args.pad_to_multiple_of}: expect recompiles")

    if args.pad_to_multiple_of > 0:
        pad: Optional[int] = args.pad_to_multiple_of
    elif gpu:
        pad = COMPILE_PAD_MULTIPLE if compile_on else PAD_MULTIPLE
    else:
        pad = None

    per_process_cores = max(1, hw.free_cores // max(1, hw.world_size))
    if args.dataloader_workers >= 0:
        workers = args.dataloader_workers
    else:
        workers = min(GPU_DATALOADER_WORKERS, per_process_cores - 1) if gpu else 0

    return Runtime(
        device=hw.device,
        device_name=hw.name,
        capability=f"sm{hw.capability[0]}{hw.capability[1]}" if hw.capability else None,
        precision=precision,
        threads=args.num_threads or per_process_cores,
        # TrainingArguments(tf32=True) raises on cards without TF32, so it is asked for only where it exists.
        tf32=bool(args.tf32 and gpu and hw.capability and hw.capability >= (8, 0)),
        optim="adamw_torch_fused" if args.optim == "auto" else args.optim,
        attn_implementation=None if args.attn_implementation == "auto" else args.attn_implementation,
        group_by_length=args.group_by_length,
        pad_to_multiple_of=pad,
        torch_compile=compile_on,
        compile_reason=reason,
        dataloader_workers=workers,
        world_size=hw.world_size,
        notes=notes,
    )


def load_model(model_name: str, runtime: Runtime, model_class: str = "AutoModelForSequenceClassification", **kwargs):
    """The task's model (``model_class`` of transformers) with the chosen attention kernels; models without them
    load with their default."""
    import transformers

    auto_class = getattr(transformers, model_class)
    if runtime.attn_implementation:
        try:
            return auto_class.from_pretrained(model_name, attn_implementation=runtime.attn_implementation, **kwargs)
        except (ValueError, ImportError) as error:
            runtime.notes.append(
                f"attn_implementation={runtime.attn_implementation} unavailable for this model "
                f"({error}); using the model's default"
            )
            runtime.attn_implementation = None
    return auto_class.from_pretrained(model_name, **kwargs)


# ---------------------------------------------------------------------------------------------- batch size


@dataclass
class BatchPlan:
    batch_size: int  # per device
    learning_rate: float
    reference_batch_size: int
    global_batch_size: int  # per optimizer step, all processes, accumulation included
    how: str

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_learning_rate(learning_rate: float, batch: int, reference_batch: int, rule: str) -> float:
    ratio = batch / reference_batch
    if rule == "sqrt":
        return learning_rate * math.sqrt(ratio)
    if rule == "linear":
        return learning_rate * ratio
    return learning_rate


def batch_cap(args, train_rows: int, world: int) -> int:
    """Largest batch auto may pick: ``max_batch_size`` and an epoch of at least MIN_STEPS_PER_EPOCH steps."""
    per_step = max(1, train_rows // (MIN_STEPS_PER_EPOCH * world * args.gradient_accumulation_steps))
    data_cap = 1 << (per_step.bit_length() - 1)
    return max(args.batch_size, min(args.max_batch_size, data_cap))


def plan_batch(args, runtime: Runtime, model, train_rows: int) -> BatchPlan:
    """Per-device batch and learning rate for this run (see the module docstring for the rule)."""
    world = runtime.world_size
    batch, how = args.batch_size, "the model's batch size"
    if args.auto_batch_size and runtime.device == "cuda":
        cap = batch_cap(args, train_rows, world)
        batch = agree_min(largest_batch(cuda_fit_probe(model, args.max_length, runtime.precision), cap))
        how = f"auto: the largest power-of-two batch up to {cap} that fits in {MEMORY_HEADROOM:.0%} of GPU memory"
    elif args.auto_batch_size:
        how = "auto on CPU keeps the model's batch size (memory is not the limit and a larger batch is no faster)"
    learning_rate = scaled_learning_rate(args.learning_rate, batch * world, args.batch_size, args.lr_scaling)
    if learning_rate != args.learning_rate:
        how += f"; learning rate {args.learning_rate:g} -> {learning_rate:g} ({args.lr_scaling} scaling)"
    return BatchPlan(
        batch_size=batch,
        learning_rate=learning_rate,
        reference_batch_size=args.batch_size,
        global_batch_size=batch * world * args.gradient_accumulation_steps,
        how=how,
    )


def largest_batch(fits: Callable[[int], bool], cap: int) -> int:
    """Halve from ``cap`` until ``fits``."""
    batch = cap
    while batch >= 1:
        if fits(batch):
            return batch
        batch //= 2
    raise UserError(
        "the model does not fit on the GPU even at batch 1; use a shorter model.max_length or a GPU with more memory"
    )


def cuda_fit_probe(model, max_length: int, precision: str) -> Callable[[int], bool]:
    """Whether a forward/backward step at ``max_length``, plus Adam's moments, fits in MEMORY_HEADROOM of the GPU."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    total = torch.cuda.get_device_properties(device).total_memory
    # The probe takes no optimizer step, so the two fp32 moments AdamW will keep per parameter are added here.
    moments = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    vocab = model.config.vocab_size

    def fits(batch: int) -> bool:
        ok = _probe_fits(model, device, dtype, batch, max_length, vocab, moments, total)
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return ok

    return fits


def _probe_fits(model, device, dtype, batch: int, length: int, vocab: int, moments: int, total: int) -> bool:
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    try:
        ids = torch.randint(min(1000, vocab - 1), vocab, (batch, length), device=device)
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        return False
    return torch.cuda.max_memory_allocated(device) + moments <= MEMORY_HEADROOM * total


def agree_min(value: int) -> int:
    """The smallest value over all processes, so every rank trains with the same batch."""
    if world_size() <= 1:
        return value
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # joins the process group the Trainer will use
    tensor = torch.tensor([value], device=PartialState().device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


# ---------------------------------------------------------------------------------------------- plan check


def check_compute(plan) -> List[str]:
    """Speed settings that contradict each other (each alone is checked against its declaration in finetune.config.spec)."""
    compute, problems = plan.compute, []
    if compute.device == "cpu" and compute.precision == "fp16":
        problems.append("compute.precision=fp16 with compute.device=cpu: fp16 needs a GPU; use fp32 or bf16")
    if compute.device == "cpu" and compute.gpus > 1:
        problems.append(f"compute.gpus={compute.gpus} with compute.device=cpu: several GPUs need device auto or cuda")
    return problems
