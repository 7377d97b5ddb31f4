"""Scoring a model on a split: accuracy and loss, the read-out after each time step, firing rates and the
spike-driven verdict on a sample of it.  Training scores its validation split with these; so does ``eval``
(``scoring.evaluate_checkpoint``)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..analysis.early_exit import score_policies
from ..analysis.energy import policy_energy, steps_and_samples
from ..analysis.probe import SynapticProbe
from ..data.split import split_sample
from ..nn.fast import FastPath
from ..nn.layers import running_mean
from ..utils.errors import InputError
from ..utils.progress import progress_bar
from .distributed import all_reduce_sum

__all__ = ["evaluate", "read_outs", "spike_stats", "sampled_spike_stats"]



@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, path: FastPath | None = None,
             progress: bool = False, per_step: bool = False, exit_at: tuple[float, ...] = (),
             record: list | None = None) -> dict:
    """Mean cross-entropy, top-1 and top-5 accuracy over ``loader``, summed over every process.
    ``path`` gives the autocast dtype and input layout (default: fp32, as laid out).  With ``per_step``
    also ``val_acc_per_step``: the top-1 of the read-out after each time step (``forward_steps``), and
    for each confidence in ``exit_at`` the top-1, mean time steps and backbone energy per image of exiting
    early (``early_exit``), beside the energy of running every step (``backbone_uJ``).  ``record`` gets
    each batch's top-5 ``(class indices, probabilities, targets)`` on the CPU, in the loader's order."""
    path = path or FastPath.off()
    model.eval()
    # with early exits a probe counts, per layer, the synaptic events of the sample-steps each policy runs
    probe = SynapticProbe(model) if per_step and exit_at else None
    # loss, top1, top5, n[, top1 after step 1..T], T the inputs' (a sequence's may differ from model.T);
    # zeros where this process's shard of the split is empty
    sums, images = None, 0
    with probe or contextlib.nullcontext():
        for x, y in progress_bar(loader, "eval", enabled=progress):
            x, y = path.to_input(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            path.step_begin()
            if probe is not None:
                probe.per_step(*steps_and_samples(x, None, None, model))
            with path.autocast(device):
                if per_step:
                    logits, steps = (out.float() for out in read_outs(model, x))
                else:
                    logits = model(x).float()  # with CUDA graphs the output lives only until the next step
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            if record is not None:
                record.append((top.cpu(), logits.softmax(1).gather(1, top).cpu(), y.cpu()))
            batch = [nn.functional.cross_entropy(logits, y, reduction="sum").double(), (top[:, 0] == y).sum().double(),
                     (top == y[:, None]).any(1).sum().double(), torch.tensor(float(len(y)), device=device).double()]
            images += len(y)
            if per_step:
                batch += list((steps.argmax(-1) == y).sum(1).double()) + score_policies(steps, y, exit_at, probe)
            batch = torch.stack(batch)
            if sums is None:
                sums = torch.zeros_like(batch)
            elif len(batch) != len(sums):
                raise InputError(f"per_step: a batch of {len(steps)} time steps after one of "
                                 f"{len(sums) - len(batch) + len(steps)}")
            sums += batch
    if sums is None:
        sums = torch.zeros(4 + (model.T + 2 * len(exit_at) if per_step else 0), dtype=torch.float64, device=device)
    return _results(all_reduce_sum(sums).tolist(), per_step, exit_at, probe, images)


def _results(sums: list[float], per_step: bool, exit_at: tuple[float, ...], probe, images: int) -> dict:
    """``evaluate``'s figures from the split's sums: loss, top-1, top-5, count[, top-1 after each step, then
    each early-exit policy's top-1 and time steps]."""
    loss, top1, top5, n, *rest = sums
    if n == 0:
        raise RuntimeError("the validation split is empty")
    out = {"val_loss": loss / n, "val_acc": top1 / n, "val_acc5": top5 / n, "val_images": int(n)}
    if not per_step:
        return out
    n_steps = len(rest) - 2 * len(exit_at)
    exits = [{"confidence": p, "val_acc": rest[n_steps + 2 * i] / n, "mean_steps": rest[n_steps + 2 * i + 1] / n}
             for i, p in enumerate(exit_at)]
    out["val_acc_per_step"] = [c / n for c in rest[:n_steps]]
    if exit_at:
        out["early_exit"] = exits
        # this process's share of the split: eval runs as one process (the probe's counts are not all-reduced)
        uJ = policy_energy(probe, images) if images else None
        if uJ is not None:
            out["backbone_uJ"] = uJ.pop()
            for e, u in zip(exits, uJ):
                e["backbone_uJ"] = u
    return out


def read_outs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(x)`` and ``model.forward_steps(x)`` (logits ``[B, classes]``, and ``[T, B, classes]`` after each
    time step) from one pass of the backbone and the head."""
    head = model.head
    pooled = head.pool_steps(model.forward_features(x))
    return head.finish(pooled.mean(0)), head.finish(running_mean(pooled))


PROBE_BATCHES = 4  # batches of a split's batch size: the sample its firing rate and verdict are read off


@torch.no_grad()
def spike_stats(model: nn.Module, loader, device: torch.device) -> dict:
    """Mean firing rate of every spike input to a synaptic layer (encoding layer and read-out excluded)
    and the spike-driven verdict, from ``SynapticProbe`` on every ``(x, y)`` batch of ``loader``."""
    model.eval()
    images = 0
    with SynapticProbe(model, provenance=True) as probe:
        for x, _ in loader:
            model(x.to(device))
            images += x.shape[1] if x.dim() == 5 else len(x)  # [T, B, ...] sequences or [B, ...] images
    spiking = [s for r in probe.ordered[1:] if not r.readout for s in r.inputs if s.kind == "spike"]
    total, numel = sum(s.total for s in spiking), sum(s.numel for s in spiking)
    return {"firing_rate": total / numel if numel else 0.0, **probe.verdict(), "probe_images": images}


def sampled_spike_stats(model: nn.Module, data, device: torch.device, batch_size: int, seed: int) -> dict:
    """``spike_stats`` on a seeded, class-balanced sample of ``PROBE_BATCHES`` batches of ``data.val`` (a
    ``DataSplits``; its first batches would be one class), and the sample's name (``probe_sample``: "1024 of 5000
    images, class-balanced, seed 0" of ``data.val_name``)."""
    from torch.utils.data import DataLoader


    sample, named = split_sample(data.val, PROBE_BATCHES * batch_size, seed)
    loader = DataLoader(sample, batch_size, collate_fn=data.collate)
    return {**spike_stats(model, loader, device), "probe_sample": named}
