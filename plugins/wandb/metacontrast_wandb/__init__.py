"""metacontrast-wandb: runs logged to Weights & Biases (``logger=[jsonl, wandb]``)."""
