"""Hardware-aware training switches: what runs fast on this device without changing the maths silently.

CPU: fp32 (bf16 on CPUs without native support is slower and changes numerics), threads matched to the
cores actually free, length-grouped batches so padding stays small. GPU: bf16 autocast where the card
supports it (fp16 with loss scaling otherwise), TF32 matmuls, fused AdamW, padding to a multiple of 8.
"""
from __future__ import annotations


def choose_runtime(args) -> dict:
    import torch

    from finetune.train import free_cores

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is visible")
    threads = args.num_threads or free_cores()
    kwargs = {"use_cpu": not cuda,
              "train_sampling_strategy": "group_by_length" if args.group_by_length else "random",
              "dataloader_num_workers": args.dataloader_workers}
    precision = args.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "bf16":
        kwargs["bf16"] = True
    elif precision == "fp16":
        kwargs["fp16"] = True
    pad = args.pad_to_multiple_of or (8 if cuda else None)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        kwargs["optim"] = "adamw_torch_fused"
        kwargs["dataloader_pin_memory"] = True
    else:
        kwargs["dataloader_pin_memory"] = False
    return {"device": "cuda" if cuda else "cpu", "precision": precision, "threads": threads,
            "pad_to_multiple_of": pad, "trainer_kwargs": kwargs}
