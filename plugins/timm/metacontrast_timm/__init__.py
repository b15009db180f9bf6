"""metacontrast-timm: timm models as metacontrast encoders (``encoder=timm``)."""
