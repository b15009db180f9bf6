"""metacontrast-moco: MoCo v2's queue InfoNCE loss."""
