"""metacontrast-simclr: the NT-Xent loss of SimCLR (Chen et al., 2020)."""

__version__ = "0.1.0"
