import importlib
import os
import sys
import types

import pytest


@pytest.fixture(scope="module")
def sj():
    """SpikingJelly's dataset modules, without ``spikingjelly/datasets/__init__`` (it imports SHD's h5py, which
    CI does not install); skipped where SpikingJelly is absent."""
    sjp = pytest.importorskip("spikingjelly")
    name, saved = "spikingjelly.datasets", dict(sys.modules)
    pkg = types.ModuleType(name)
    pkg.__path__ = [os.path.join(os.path.dirname(sjp.__file__), "datasets")]
    sys.modules[name] = pkg
    try:
        yield types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}")
                                       for m in ("utils", "n_mnist", "dvs128_gesture", "cifar10_dvs")})
    finally:
        for k in set(sys.modules) - set(saved):
            del sys.modules[k]
        sys.modules.update(saved)
