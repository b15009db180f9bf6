"""metacontrast-classic: triplet (with margin and semi-hard mining) and N-pair losses."""

__version__ = "0.1.0"
