"""finetune: fine-tune transformer text classifiers from declarative configs, locally and on Azure ML."""

__version__ = "0.1.0"
