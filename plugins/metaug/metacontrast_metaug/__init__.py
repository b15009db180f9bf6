"""metacontrast-metaug: MetAug (Li et al., 2022) as metacontrast components."""
