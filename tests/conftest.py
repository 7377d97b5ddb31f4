import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cuda_capability(monkeypatch):
    """``set(major, minor)``: the compute capability every CUDA device reports, GPU or not, for code
    that only asks (``fast.amp_dtype``).  Hopper unless a test sets another."""
    def set_capability(major: int, minor: int = 0) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))

    set_capability(9)
    return set_capability


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads crawl on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



@pytest.fixture
def ddp_of_one(tmp_path):
    """``wrap(module) -> (DDP(module), allreduces)`` in a one-process gloo group: a real DDP whose gradient
    all-reduces are counted (one per bucket), so tests can see when a backward synchronises."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    def wrap(module):
        allreduces = []

        def count(state, bucket):
            allreduces.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())  # one process: the sum is the buffer itself
            return done

        ddp = DistributedDataParallel(module)
        ddp.register_comm_hook(None, count)
        return ddp, allreduces

    yield wrap
    dist.destroy_process_group()
