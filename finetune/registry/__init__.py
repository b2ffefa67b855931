"""The model registry and what a registered model carries: MLflow store, packaging, runtime environments."""
