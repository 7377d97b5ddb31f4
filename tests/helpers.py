"""Small helpers shared by test modules."""
from spikingformer.nn.neuron import MultiStepLIF
from spikingformer.analysis import batches


def record_spikes(model):
    """Every MultiStepLIF's output, in call order, for as long as the model lives."""
    spikes = []
    for m in model.modules():
        if isinstance(m, MultiStepLIF):
            m.register_forward_hook(lambda mod, inp, out: spikes.append(out.detach().clone()))
    return spikes


def calibrate_bn(model, x, steps: int = 3):
    """Give BN running statistics from real forward passes, so an eval-mode model fires."""
    return batches.calibrate_bn(model, [x] * steps)
