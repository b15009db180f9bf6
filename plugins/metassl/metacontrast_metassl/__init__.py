"""Self-supervised learning as meta-learning (Ni et al., ICLR 2022) as metacontrast parts."""
