"""Firing rates the official repositories publish for their trained models, in our layer names.

Eq. 19 prices a synaptic layer by its input's firing rate, which only a trained model on real data gives.  Where
an official repository publishes the rates its trained model fires at, ``energy_at_published_rates`` prices our
model of the same structure at them, so the energy column of a comparison can be checked against the paper's
rather than against an untrained model.

Published so far: the Spikingformer repository's energy logs of its trained Spikingformer-8-512 and 8-768
(zhouchenlin2096/Spikingformer, ``imagenet/energy_consumption_logs/``: ``Spikingformer-8-512_log.txt`` and the
8-768's, saved as ``energy_consumption_``).  For each synaptic layer a log gives the dense operations over
``T = 4`` steps and the accumulates its script charged, whose ratio is the input's firing rate, per block the
attention's Q, K and V rates, and its totals (8-512: 0.347329512 G MAC, 6.51754094076244 G AC, 7.4635026 mJ;
8-768: 0.520993768 G MAC, 12.513659576717108 G AC, 13.658864951845398 mJ).  Priced here: 7.459 mJ, and 13.669 mJ
(13.653 counting the attention as the log does).
The differences are the official counter's: it charges a conv's bias additions as spike-driven accumulates,
which a bias is not (it folds away), and it counts the 8-768's attention as 12 heads (its "SSA info") where the
model has 8 (its training args, and the paper's ``imagenet.yml``).
"""
from __future__ import annotations

import torch
from torch import nn

from .energy import EnergyReport, energy_from_probe
from .probe import SynapticProbe

__all__ = ["PUBLISHED_LOGS", "PUBLISHED_RATES", "published_rates", "energy_at_published_rates"]

# Spikingformer-8-512's log: (dense ops over T, ACs charged) of the tokenizer's four spike-fed convs, in order
_TOKENIZER_512 = [(3699376128, 955595335.05072), (3699376128, 567352732.32666), (3699376128, 484860113.01378),
                  (1849688064, 239640649.6176)]
# per block: ACs of (q/k/v conv, proj, fc1, fc2); q, k and v read the same input
_BLOCKS_512 = [
    (36294116.91444, 61324280.75375191, 2.20482576e+08, 2.70491441e+07),
    (6.94564082e+07, 6.37503862e+07, 2.71977241e+08, 2.43828727e+07),
    (7.03339749e+07, 6.46986613e+07, 2.86069781e+08, 2.10542404e+07),
    (7.07533763e+07, 5.99013096e+07, 2.85499925e+08, 1.58668667e+07),
    (7.05497085e+07, 4.32200951e+07, 2.96846249e+08, 1.16866970e+07),
    (7.38409652e+07, 3.41198850e+07, 2.96114600e+08, 7.83468481e+06),
    (7.03473378e+07, 2.19994710e+07, 2.65800898e+08, 4.67945935e+06),
    (6.52882326e+07, 1.95155069e+07, 2.46475020e+08, 1.13243712e+07)]
_BLOCK_OPS_512 = (2.05520896e+08, 2.05922304e+08, 8.23689216e+08, 8.22484992e+08)  # of q/k/v, proj, fc1, fc2


def _log(source: str, tokenizer, blocks, qkv, heads: int, mac: float, ac: float, mj: float) -> dict:
    """One log in one shape: every rate a fraction, ACs charged / dense operations of the layer (not the log's
    rate column, which for the tokenizer's convs is not that ratio), the totals as printed."""
    return dict(source=source, tokenizer=list(tokenizer), blocks=[tuple(b) for b in blocks], qkv_rates=qkv,
                ssa_heads=heads, total_mac=mac, total_ac=ac, total_mJ=mj)


_LOGS = "zhouchenlin2096/Spikingformer imagenet/energy_consumption_logs/"
PUBLISHED_LOGS = {
    "spikingformer_8_512": _log(
        _LOGS + "Spikingformer-8-512_log.txt",
        [ac / ops for ops, ac in _TOKENIZER_512],
        [[ac / ops for ac, ops in zip(acs, _BLOCK_OPS_512)] for acs in _BLOCKS_512],
        [(0.17230188630104062, 0.03626344770312309, 0.06957707978010177),
         (0.11627475060462952, 0.040295450145006184, 0.07173207724809647),
         (0.10669307922124864, 0.044414592387676234, 0.07524623577594756),
         (0.08188644799470902, 0.05000199048876763, 0.0768778057050705),
         (0.06365273276925086, 0.04325467040181161, 0.07054187965631485),
         (0.07711239219903945, 0.0311313860142231, 0.07321582739830017),
         (0.07023756886482238, 0.024202287513613703, 0.07348622434139251),
         (0.09727698216676713, 0.02812242347121239, 0.07954712931871415)],
        8, 0.347329512e9, 6.51754094076244e9, 7.4635026),
    "spikingformer_8_768": _log(  # ACs as printed: in full for the tokenizer and blocks 0-3, to nine digits after
        _LOGS + "energy_consumption_ (Spikingformer-8-768)",
        [ac / ops for ac, ops in zip((1647813072.3792412, 1097851124.9990811, 1005883616.6510513, 541388139.6043968),
                                     (8323596288,) * 3 + (4161798144,))],
        [[ac / ops for ac, ops in zip(acs, (462422016, 463024128, 1852096512, 1850290176))] for acs in (
            (68201345.26792125, 122778694.97101316, 421380369.61726296, 43474185.38996657),
            (138149944.20801, 129699772.0780382, 540831983.8556844, 33789012.10292912),
            (134395653.4998525, 132344480.08793263, 551248963.7208203, 28794715.654274754),
            (142609575.6632925, 108566051.9027586, 582919266.5858071, 18860540.295455627),
            (1.44211661e+08, 8.34504886e+07, 5.79467510e+08, 1.04171588e+07),
            (1.41930230e+08, 5.83566737e+07, 5.55029621e+08, 5.82482399e+06),
            (1.35055808e+08, 3.74602085e+07, 4.99164982e+08, 5.34302272e+06),
            (1.26616883e+08, 3.31282219e+07, 4.99451077e+08, 1.03330753e+07))],
        [(0.13504587255466577, 0.029809614839687148, 0.059374576983854926),
         (0.10502227857612378, 0.03767449076381095, 0.060627427491204526),
         (0.083264635933484, 0.03776095036300132, 0.06862975352579866),
         (0.0563250279859985, 0.03519357228931017, 0.06847197796057848),
         (0.06754581377675473, 0.03175003137613819, 0.058989271577890176),
         (0.05021996689208955, 0.02239815261861332, 0.042047852859927334),
         (0.075462721379392, 0.03070094926452176, 0.0403859808697728),
         (0.08323420930894296, 0.029329224434424882, 0.07040979446432474)],
        12, 0.520993768e9, 12.513659576717108e9, 13.658864951845398),
}


def _layer_rates(log: dict) -> dict[str, list[float]]:
    rates = {f"tokenizer.convs.{i}.conv": [r] for i, r in enumerate(log["tokenizer"])}
    for b, (layers, qkv) in enumerate(zip(log["blocks"], log["qkv_rates"])):
        q, proj, fc1, fc2 = layers
        rates.update({f"blocks.{b}.attn.{n}.conv": [q] for n in "qkv"})
        rates.update({f"blocks.{b}.attn.proj.conv": [proj], f"blocks.{b}.mlp.fc1.conv": [fc1],
                      f"blocks.{b}.mlp.fc2.conv": [fc2], f"blocks.{b}.attn.qkv": list(qkv)})
    return rates


# model name -> (where the rates are published, {layer: firing rate of each input})
PUBLISHED_RATES = {name: (log["source"], _layer_rates(log)) for name, log in PUBLISHED_LOGS.items()}


def published_rates(name: str) -> dict[str, list[float]] | None:
    """``{layer: [firing rate of each input]}`` an official repository publishes for the named model, else None."""
    found = PUBLISHED_RATES.get(name)
    return dict(found[1]) if found else None


def energy_at_published_rates(model: nn.Module, x: torch.Tensor, rates: dict[str, list[float]], T: int,
                              model_name: str = "") -> EnergyReport:
    """Eq. 19-20 for ``model`` with each listed layer's inputs set to the published ``rates`` (one forward on ``x``,
    one image, gives the dense operation counts; the layers not listed, the encoding layer and the head, keep what
    that forward fed them)."""
    with SynapticProbe(model) as probe, torch.no_grad():
        model(x)
    unknown = sorted(set(rates) - set(probe.layers))
    if unknown:
        raise KeyError(f"published rates for layers the model does not have: {unknown[:4]}")
    for name, layer_rates in rates.items():
        for stats, rate in zip(probe.layers[name].inputs, layer_rates):
            stats.total = rate * stats.numel
    images = x.shape[0] if x.dim() == 4 else x.shape[1]  # [B, C, H, W] or [T, B, C, H, W]
    return energy_from_probe(probe, images, T, model_name=model_name)
