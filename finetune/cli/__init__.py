"""The command line of ``python -m finetune``: Hydra composition, overrides and Hydra's own flags."""
