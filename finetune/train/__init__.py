"""Training: ``python -m finetune.train`` (the one entry point), its callbacks, tracking, hardware defaults, checkpoints and process."""
