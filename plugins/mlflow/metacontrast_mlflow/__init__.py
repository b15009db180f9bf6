"""metacontrast-mlflow: runs logged to MLflow tracking (``logger=[jsonl, mlflow]``)."""
