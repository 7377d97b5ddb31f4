"""Stopping a training run in the middle of an epoch without losing its work (``train``, ``pretrain``).

Two things stop a run early: a stop signal (SIGINT from Ctrl-C, SIGTERM from ``kill`` or a scheduler's
preemption) and a sample that fails to load or transform (a corrupt file, a transform that raises;
``data.GuardedLoader`` names it).  Either way the run first checkpoints where it stood after its last
optimizer update (the batches of an update still accumulating are undone: their gradients dropped, the
BatchNorm statistics they moved restored; the resumed run computes them again), atomically, then ends with
one line saying why, where, and what was saved; ``--resume`` continues from there as if never stopped.
A sample that fails in the epoch's validation stops the run with the epoch's training saved: resumed,
it validates again without training again.

Under ``torchrun`` the processes agree on a stop signal every 10 steps, so they save together; a
failing sample stops only its own process, which cannot save alone (saving gathers every process's
RNG state): the run resumes from its last epoch-end or ``ckpt_every`` checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from pathlib import Path

import torch

from ..data.sampler import SampleFailure
from ..weights import checkpoint as ckpt
from .distributed import DistInfo, all_reduce_sum

__all__ = ["RunInterrupted", "StopSignals", "UpdateMark", "stop_mid_epoch", "validating", "ignore_interrupts"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A stop signal ended the run after it saved a checkpoint; ``exit_code`` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM only ask the epoch loop to stop (``pending``), which it does after
    the batch in progress; a second signal acts as usual, at once and unsaved.  Python lets only the main
    thread install handlers: elsewhere the signals keep their usual effect."""

    def __init__(self):
        self.signum, self._previous = 0, {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._ask) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _ask(self, signum, _frame) -> None:  # nothing else here: a handler may run inside any statement
        self.signum = signum
        self._restore()

    def pending(self, info: DistInfo, step: int) -> int:
        """The signal to stop for after ``step`` batches, 0 for none; several processes decide together
        every 10 steps (one small all-reduce), so that all of them stop, and save, at the same step."""
        if info.world == 1:
            return self.signum
        if step % 10:
            return 0
        asked = all_reduce_sum(torch.tensor([float(self.signum > 0)], device=info.device))
        return self.signum or (signal.SIGTERM if asked.item() else 0)


def ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C, which reaches every process of the terminal's group, to the training
    process: a worker it stopped would fail the loader at once.  SIGTERM still ends a worker (it is how
    workers are shut down), so it is for the training process alone (``kill PID``, torchrun's forwarding)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclasses.dataclass
class UpdateMark:
    """Where an epoch stood after its last optimizer update: batches done, the epoch's (loss, correct, n)
    sums so far, every RNG state and the model's buffers (BatchNorm's running statistics move with every
    batch, not only with updates): what a checkpoint between two updates must hold."""
    step: int
    global_step: int
    sums: torch.Tensor
    rng: dict
    buffers: list

    @classmethod
    def now(cls, state, sums: torch.Tensor, model: torch.nn.Module) -> UpdateMark:
        return cls(state.step, state.global_step, sums.clone(), ckpt.rng_state(),
                   [b.detach().clone() for b in model.buffers()])

    @torch.no_grad()
    def rewind(self, state, model: torch.nn.Module) -> None:
        """Put ``state``, the RNGs and ``model``'s buffers back here, totalling the sums over every process."""
        state.step, state.global_step = self.step, self.global_step
        state.epoch_sums = all_reduce_sum(self.sums.clone()).tolist()
        ckpt.set_rng_state(self.rng)
        for buffer, saved in zip(model.buffers(), self.buffers):
            buffer.copy_(saved)


def _saved(cfg, state, save) -> str:
    save()
    return f"saved {Path(cfg.output) / 'last.pt'} at epoch {state.epoch + 1} step {state.step}"


def stop_mid_epoch(error: Exception, mark: UpdateMark, model, cfg, state, info: DistInfo, save, steps: int):
    """Checkpoint at ``mark`` (with ``save``) and raise ``error`` again, saying where the run stopped and what
    was saved.  ``state.step``: the batches done when it stopped."""
    if isinstance(error, RunInterrupted):
        where = f"{signal.Signals(error.signum).name} in epoch {state.epoch + 1} after step {state.step}/{steps}"
        mark.rewind(state, model)
        raise RunInterrupted(f"{where}; {_saved(cfg, state, save)}: --resume continues there", error.signum)
    where = f"epoch {state.epoch + 1} step {state.step + 1}/{steps}"  # the step whose batch failed
    if info.world > 1:
        raise SampleFailure(f"{where}: {error}; not saved (a process of several cannot save alone): --resume "
                            "continues from the last checkpoint")
    mark.rewind(state, model)
    raise SampleFailure(f"{where}: {error}; {_saved(cfg, state, save)}: repair or replace that sample (deleting it "
                        "would renumber the dataset), then --resume continues there")


@contextlib.contextmanager
def validating(cfg, state, info: DistInfo, save):
    """The epoch's validation, after its training (``state.step`` at the epoch's end, ``state.epoch_sums``
    its totals): a sample that fails there stops the run once that training is checkpointed."""
    try:
        yield
    except SampleFailure as e:
        why = f"validation after epoch {state.epoch + 1}: {e}"  # raised below, where no frame holds ``e``
    else:
        return
    if info.world > 1:
        raise SampleFailure(f"{why}; not saved (a process of several cannot save alone)")
    raise SampleFailure(f"{why}; {_saved(cfg, state, save)} (trained, not validated): repair or replace that "
                        "sample, then --resume validates the epoch")
