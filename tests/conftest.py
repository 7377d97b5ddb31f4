import pytest
import torch

from spikingformer import energy


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def calibrate_bn(model, x, steps: int = 3):
    """Give BN running statistics from real forward passes, so an eval-mode model fires."""
    return energy.calibrate_bn(model, [x] * steps)
