"""metacontrast-tabular: pre-training on tables (views, encoders, few-label evaluation)."""

__version__ = "0.1.0"
