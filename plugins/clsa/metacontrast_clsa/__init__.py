"""metacontrast-clsa: CLSA's distributional divergence minimisation (DDM) loss."""
