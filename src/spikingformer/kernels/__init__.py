"""Hand-written GPU kernels (Triton).  Optional: importing this package needs ``triton``."""
from .lif_triton import check_device, multistep_lif_triton

__all__ = ["check_device", "multistep_lif_triton"]
