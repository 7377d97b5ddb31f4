"""Hand-written GPU kernels (Triton).  Optional: importing this package needs ``triton``."""
from .lif_triton import check_device, lif_stream, multistep_lif_triton

__all__ = ["check_device", "lif_stream", "multistep_lif_triton"]
