"""Small helpers shared by test modules."""
import contextlib
import os
import signal
import subprocess
import sys

from spikingformer.analysis import batches
from spikingformer.nn.neuron import MultiStepLIF


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


@contextlib.contextmanager
def torchruns(*argvs, env=None, timeout: float = 300):
    """Start ``python -m torch.distributed.run ARGV`` for every argv at once, yield while they run (the
    in-process reference runs meanwhile: a launcher mostly waits on its workers' imports), then wait for
    each and assert it exited 0, its stderr's tail in the message.  Any failure kills them all."""
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv], env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
             for argv in argvs]
    try:
        yield
        for proc in procs:
            err = proc.communicate(timeout=timeout)[1]
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in procs:  # SIGTERM first: torchrun passes it on to its workers
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
