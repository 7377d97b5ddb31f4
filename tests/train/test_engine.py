"""The engine's pieces on toy models: gradient accumulation, clipping, the schedule, label smoothing,
weight decay groups, restoring optimizer state, seeding."""
import math

import pytest
import torch

from spikingformer.train.config import TrainConfig
from spikingformer.weights.checkpoint import load_checkpoint

from .test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

class FixedLoader:
    """The batches of one epoch, as ``train_one_epoch`` reads a loader (its sampler knows the epoch's length)."""

    def __init__(self, batches):
        from types import SimpleNamespace

        self.batches, self.sampler = batches, SimpleNamespace(steps_per_epoch=len(batches))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def one_epoch(batches, accum_steps, model, clip_grad=0.0):
    """``train_one_epoch`` with SGD + momentum on ``batches``; returns its loss, the schedule's update counts and
    the progress."""
    from types import SimpleNamespace

    from spikingformer.nn.fast import FastPath
    from spikingformer.train.classify import Progress
    from spikingformer.train.distributed import DistInfo
    from spikingformer.train.engine import train_one_epoch

    cfg = SimpleNamespace(accum_steps=accum_steps, clip_grad=clip_grad, sched_on_updates=True, ckpt_every=0,
                          total_epochs=1, progress=False)
    updates = []
    sched = SimpleNamespace(step_update=updates.append)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = Progress()
    info = DistInfo(rank=0, world=1, device=torch.device("cpu"))
    loss, _ = train_one_epoch(cfg, state, model, FixedLoader(batches), opt, sched,
                              torch.amp.GradScaler("cpu", enabled=False), info, FastPath.off(), lambda: None,
                              lambda m, x, y: (torch.nn.functional.cross_entropy(m(x), y), None))
    return loss, updates, state


def test_accumulated_batches_update_like_one_batch_of_their_union(ddp_of_one):
    """accum_steps=2 over five batches of 4 makes the updates of batches of 8, 8 and 4 (the epoch's last group
    is short): same weights, same mean loss, the schedule counts three updates, DDP all-reduces once per update
    (a real DDP, whose all-reduces are counted)."""
    torch.manual_seed(0)
    xs, ys = torch.randn(5, 4, 6), torch.randint(0, 3, (5, 4))
    small = [(xs[i], ys[i]) for i in range(5)]
    large = [(xs[0:2].flatten(0, 1), ys[0:2].flatten()), (xs[2:4].flatten(0, 1), ys[2:4].flatten()), (xs[4], ys[4])]
    ref_model = torch.nn.Linear(6, 3)
    model, allreduces = ddp_of_one(torch.nn.Linear(6, 3))
    model.module.load_state_dict(ref_model.state_dict())

    ref_loss, ref_updates, ref_state = one_epoch(large, 1, ref_model)
    loss, updates, state = one_epoch(small, 2, model)
    assert updates == ref_updates == [1, 2, 3]
    assert len(allreduces) == 3  # after batches 1, 3 and 4, which end their groups
    assert (state.step, state.global_step) == (5, 5) and (ref_state.step, ref_state.global_step) == (3, 3)
    for a, b in zip(model.module.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert abs(loss - ref_loss) < 1e-6
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next epoch


def test_accumulation_config_is_checked():
    with pytest.raises(ValueError, match="accum_steps must be >= 1"):
        TrainConfig(accum_steps=0)
    with pytest.raises(ValueError, match="ckpt_every .* must be a multiple of accum_steps"):
        TrainConfig(accum_steps=4, ckpt_every=6)
    assert TrainConfig(accum_steps=4, ckpt_every=8).accum_steps == 4


def test_clip_grad_bounds_the_global_gradient_norm():
    """clip_grad=c: the first SGD step moves the parameters by lr x the gradient clipped to global norm c."""
    torch.manual_seed(0)
    batch = [(torch.randn(4, 6) * 100, torch.randint(0, 3, (4,)))]  # a gradient far above the clip
    for clip in (0.0, 0.01):
        model = torch.nn.Linear(6, 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        one_epoch(batch, 1, model, clip_grad=clip)
        moved = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
        if clip:
            assert moved == pytest.approx(0.1 * clip, rel=1e-4)  # lr 0.1
        else:
            assert moved > 10 * 0.1 * 0.01


def _schedule(**kw):
    from spikingformer.train.engine import build_training

    cfg = TrainConfig(lr=1e-3, warmup_lr=1e-4, min_lr=0.0, epochs=4, warmup_epochs=1, cooldown_epochs=2, **kw)
    opt, sched, _, _ = build_training(cfg, torch.nn.Linear(2, 2), steps_per_epoch=10)
    return cfg, opt, sched


def test_schedule_warms_up_linearly_then_follows_the_cosine_per_epoch():
    """timm's cosine: warm-up from warmup_lr over warmup_epochs, cosine to min_lr at epochs, min_lr in the cool-down."""
    import math

    from spikingformer.train.engine import base_lr

    _, opt, sched = _schedule()
    want = [1e-4, 0.5e-3 * (1 + math.cos(math.pi / 4)), 0.5e-3, 0.5e-3 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0]
    for epoch, lr in enumerate(want):
        sched.step(epoch)
        assert base_lr(opt) == pytest.approx(lr, abs=1e-12), epoch


def test_sched_on_updates_moves_the_lr_every_update_and_resumes_mid_epoch():
    """sched_on_updates: the schedule counts optimizer updates (10 an epoch here), not epochs; ``begin_epoch``
    reports the epoch's starting lr but leaves the optimizer at the lr of the update a resumed run is at."""
    from types import SimpleNamespace

    from spikingformer.train.classify import Progress
    from spikingformer.train.engine import base_lr, begin_epoch

    cfg, opt, sched = _schedule(sched_on_updates=True)
    sched.step_update(5)  # half-way through the one warm-up epoch
    assert base_lr(opt) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    sampler = SimpleNamespace(steps_per_epoch=10, set_epoch=lambda epoch, step: None)
    lr = begin_epoch(cfg, Progress(epoch=2, step=5), sampler, sched, opt)
    assert lr == pytest.approx(0.5e-3)  # update 20 of 40: the cosine's middle
    assert base_lr(opt) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 25 / 40)))


def test_loss_is_label_smoothed_and_mixup_targets_are_smoothed_too():
    """smoothing=e: cross-entropy against (1 - e) on the label plus e spread evenly; with Mixup the targets
    themselves are smoothed to 1 - e + e/C and e/C (timm)."""
    from spikingformer.train.engine import build_training

    model = torch.nn.Linear(5, 10)
    model.num_classes = 10
    logits, y = torch.randn(4, 10), torch.tensor([0, 3, 9, 3])
    _, _, mixup, criterion = build_training(TrainConfig(smoothing=0.2), model, steps_per_epoch=1)
    logp = logits.log_softmax(1)
    want = (0.8 * -logp[torch.arange(4), y] + 0.2 * -logp.mean(1)).mean()
    assert mixup is None and float(criterion(logits, y)) == pytest.approx(float(want), rel=1e-6)

    _, _, mixup, criterion = build_training(TrainConfig(smoothing=0.2, mixup=0.5, batch_size=4), model, 1)
    mixup.mixup_enabled = False  # targets only
    _, target = mixup(torch.randn(4, 3, 8, 8), y)
    expected = torch.full((4, 10), 0.02)
    expected[torch.arange(4), y] = 0.82
    torch.testing.assert_close(target, expected)


def test_weight_decay_spares_norms_and_biases():
    from spikingformer import create_model
    from spikingformer.train.engine import build_training

    model = create_model("spikingformer_4_256", **TINY)
    opt, _, _, _ = build_training(TrainConfig(weight_decay=0.05), model, steps_per_epoch=1)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert decay[id(p)] == (0.0 if p.ndim <= 1 else 0.05), n


def test_restore_loads_optimizer_and_grad_scaler_state(tmp_path):
    from spikingformer.train.distributed import DistInfo
    from spikingformer.train.engine import build_training, restore
    from spikingformer.weights.checkpoint import save_checkpoint

    def fresh():
        model = torch.nn.Linear(2, 2)
        opt, sched, _, _ = build_training(TrainConfig(), model, steps_per_epoch=1)
        return model, opt, sched

    model, opt, sched = fresh()
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    progress = {"epoch": 3, "step": 0}
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "progress": progress, "world_size": 1}, tmp_path / "last.pt")
    model2, opt2, sched2 = fresh()
    scaler2 = torch.amp.GradScaler("cpu")
    info = DistInfo(rank=0, world=1, device=torch.device("cpu"))
    assert restore(load_checkpoint(tmp_path / "last.pt"), info, model2, opt2, sched2, scaler2) == progress
    assert scaler2.get_scale() == 1024.0
    assert all(torch.equal(a, b) for a, b in zip(model2.parameters(), model.parameters()))
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(opt2.state[b][key], opt.state[a][key])
                   for a, b in zip(model.parameters(), model2.parameters()))


def test_a_run_without_loss_scaling_resumes_with_it(capsys):
    """``amp: auto`` is bf16 on an A100 and fp16 on a T4: a run saved by the one resumes on the other."""
    from spikingformer.train.run import load_scaler

    bf16_run, fp16_run = torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", init_scale=512.0)
    scaler = torch.amp.GradScaler("cpu")
    load_scaler(scaler, bf16_run.state_dict())
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0  # torch's initial scale
    assert "loss scale starts afresh" in capsys.readouterr().err
    load_scaler(scaler, fp16_run.state_dict())
    assert scaler.get_scale() == 512.0
    off = torch.amp.GradScaler("cpu", enabled=False)
    load_scaler(off, fp16_run.state_dict())  # fp16 run resumed in bf16: nothing to scale
    assert not off.is_enabled() and capsys.readouterr().err == ""


def test_the_seed_decides_initial_weights_and_data_order():
    """``seed``: the same seed gives the same weights and batches, another seed other ones."""
    from types import SimpleNamespace

    from spikingformer.train.distributed import DistInfo
    from spikingformer.train.engine import make_loaders, seed_all

    def weights(seed):
        seed_all(seed, rank=0)
        return torch.nn.Linear(4, 4).weight.detach().clone()

    assert torch.equal(weights(3), weights(3)) and not torch.equal(weights(3), weights(4))
    data = SimpleNamespace(train=list(range(64)), val=list(range(8)), collate=None)
    info = DistInfo(rank=0, world=1, device=torch.device("cpu"))

    def order(seed, epoch):
        sampler = make_loaders(TrainConfig(seed=seed, batch_size=8, workers=0), data, info)[0]
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 0) == order(3, 0)
    assert len({tuple(order(3, 0)), tuple(order(4, 0)), tuple(order(3, 1))}) == 3


def test_an_output_that_cannot_be_written_is_refused_before_the_data_loads(tmp_path, monkeypatch):
    from spikingformer.train.run import open_run

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ValueError, match="output .*run: is a file, not a folder"):
        open_run(TrainConfig(output=str(tmp_path / "run")), resume=False)
    with pytest.raises(ValueError, match=r"output .*run/sub: .*run is a file, not a folder"):
        open_run(TrainConfig(output=str(tmp_path / "run" / "sub")), resume=False)

    def full_disk(*a, **k):  # what a read-only file system, or /proc, does even to root
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.TemporaryFile", full_disk)
    with pytest.raises(ValueError, match=r"output .*new: cannot write in .*: Read-only file system"):
        open_run(TrainConfig(output=str(tmp_path / "new")), resume=False)


def test_the_first_log_line_says_when_blocks_are_recomputed(tmp_path):
    from types import SimpleNamespace

    from spikingformer.train.run import open_output

    start = SimpleNamespace(epoch=0, step=0)
    assert open_output(tmp_path / "a", TrainConfig(), False, start) == "starting"
    assert open_output(tmp_path / "b", TrainConfig(grad_checkpointing=True), False, start).endswith(
        "blocks recomputed in the backward pass (grad_checkpointing)")
