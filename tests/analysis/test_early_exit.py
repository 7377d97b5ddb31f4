"""Early exit: each sample's first sure step, and a confidence chosen on one part of a split, scored on another."""
import pytest
import torch

from spikingformer.analysis.early_exit import (
    calibration_split,
    choose,
    early_exit,
    merge,
)


def test_early_exit_answers_each_sample_at_its_first_sure_step():
    sure, unsure = [4.0, 0.0], [0.1, 0.0]  # softmax top probability 0.98 and 0.52 over two classes
    steps = torch.tensor([[sure, unsure, unsure, sure[::-1]],     # step 1: samples 0 and 3 sure (3 of class 1)
                          [unsure, sure[::-1], unsure, sure],     # step 2: sample 1 sure, of class 1
                          [unsure, sure, unsure[::-1], sure]])    # step 3: sample 2 answered unsure, class 1
    y = torch.tensor([0, 0, 1, 0])
    correct, used, stop = early_exit(steps, y, 0.9)
    assert (correct.item(), used.item(), stop.tolist()) == (2, 1 + 2 + 3 + 1, [0, 1, 2, 0])  # samples 0, 2 right
    correct, used, stop = early_exit(steps, y, 0.99)              # nobody sure: all answered at step 3
    assert (correct.item(), used.item(), stop.tolist()) == ((steps[-1].argmax(-1) == y).sum().item(), 12, [2] * 4)


def test_the_calibration_split_is_seeded_disjoint_and_whole():
    cal, scored = calibration_split(10, 0.3, seed=0)
    assert (len(cal), len(scored)) == (3, 7) and sorted(cal + scored) == list(range(10))
    assert cal == sorted(cal) and (cal, scored) == calibration_split(10, 0.3, seed=0)
    assert any(calibration_split(10, 0.3, seed=s)[0] != cal for s in range(1, 5))
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="in \\(0, 1\\)"):
            calibration_split(10, fraction)
    with pytest.raises(ValueError, match="leaves one part empty"):
        calibration_split(3, 0.1)


def test_the_cheapest_policy_within_the_allowed_drop_is_chosen():
    policies = [dict(confidence=0.5, val_acc=0.80, mean_steps=1.2, backbone_uJ=0.1),
                dict(confidence=0.7, val_acc=0.95, mean_steps=2.0, backbone_uJ=0.4),
                dict(confidence=0.9, val_acc=0.96, mean_steps=3.0, backbone_uJ=0.6)]
    assert choose(policies, 0.96, 0.01)["confidence"] == 0.7     # 0.95 is within one point of 0.96
    assert choose(policies, 0.96, 0.0)["confidence"] == 0.9
    assert choose(policies, 0.96, 0.2)["confidence"] == 0.5
    assert choose(policies, 0.99, 0.01) is None                  # none kept the top-1
    no_energy = [{k: v for k, v in p.items() if k != "backbone_uJ"} for p in policies]
    no_energy[1]["mean_steps"] = 1.0                              # without energy, time steps are the cost
    assert choose(no_energy, 0.96, 0.2)["confidence"] == 0.7


def test_merge_weights_each_part_by_its_images():
    a = dict(val_images=1, val_loss=1.0, val_acc=1.0, val_acc5=1.0, val_acc_per_step=[0.0, 1.0], backbone_uJ=3.0)
    b = dict(val_images=3, val_loss=0.0, val_acc=0.0, val_acc5=1.0, val_acc_per_step=[1.0, 0.0])
    m = merge([a, b])
    assert m == dict(val_images=4, val_loss=0.25, val_acc=0.25, val_acc5=1.0, val_acc_per_step=[0.75, 0.25])
