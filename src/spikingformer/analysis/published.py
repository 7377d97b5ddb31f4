"""Firing rates the official repositories publish for their trained models, in our layer names.

Eq. 19 prices a synaptic layer by its input's firing rate, which only a trained model on real data gives.  Where
an official repository publishes the rates its trained model fires at, ``energy_at_published_rates`` prices our
model of the same structure at them, so the energy column of a comparison can be checked against the paper's
rather than against an untrained model.

Published so far: the Spikingformer repository's energy log of its trained Spikingformer-8-512
(zhouchenlin2096/Spikingformer, ``imagenet/energy_consumption_logs/Spikingformer-8-512_log.txt``).  For each
synaptic layer it gives the dense operations over ``T = 4`` steps and the accumulates its script charged, whose
ratio is the input's firing rate, and per block the attention's Q, K and V rates.  Its totals are 0.347329512 G MAC,
6.51754094076244 G AC and 7.4635026 mJ; priced here, 7.459 mJ (its counter also charges a conv's bias additions as
spike-driven accumulates, 5.0 M of them, which a bias is not: it folds away).
"""
from __future__ import annotations

import torch
from torch import nn

from .energy import EnergyReport, energy_from_probe
from .probe import SynapticProbe

__all__ = ["PUBLISHED_RATES", "published_rates", "energy_at_published_rates", "SPIKINGFORMER_8_512_LOG"]

# (dense ops over T, ACs charged) of the tokenizer's four spike-fed convs, in order
_TOKENIZER = [(3699376128, 955595335.05072), (3699376128, 567352732.32666), (3699376128, 484860113.01378),
              (1849688064, 239640649.6176)]
# per block: ACs of (q/k/v conv, proj, fc1, fc2); q, k and v read the same input
_BLOCKS = [
    (36294116.91444, 61324280.75375191, 2.20482576e+08, 2.70491441e+07),
    (6.94564082e+07, 6.37503862e+07, 2.71977241e+08, 2.43828727e+07),
    (7.03339749e+07, 6.46986613e+07, 2.86069781e+08, 2.10542404e+07),
    (7.07533763e+07, 5.99013096e+07, 2.85499925e+08, 1.58668667e+07),
    (7.05497085e+07, 4.32200951e+07, 2.96846249e+08, 1.16866970e+07),
    (7.38409652e+07, 3.41198850e+07, 2.96114600e+08, 7.83468481e+06),
    (7.03473378e+07, 2.19994710e+07, 2.65800898e+08, 4.67945935e+06),
    (6.52882326e+07, 1.95155069e+07, 2.46475020e+08, 1.13243712e+07)]
_BLOCK_OPS = (2.05520896e+08, 2.05922304e+08, 8.23689216e+08, 8.22484992e+08)  # dense ops of q/k/v, proj, fc1, fc2
_QKV_RATES = [  # per block: the firing rates of Q, K, V
    (0.17230188630104062, 0.03626344770312309, 0.06957707978010177),
    (0.11627475060462952, 0.040295450145006184, 0.07173207724809647),
    (0.10669307922124864, 0.044414592387676234, 0.07524623577594756),
    (0.08188644799470902, 0.05000199048876763, 0.0768778057050705),
    (0.06365273276925086, 0.04325467040181161, 0.07054187965631485),
    (0.07711239219903945, 0.0311313860142231, 0.07321582739830017),
    (0.07023756886482238, 0.024202287513613703, 0.07348622434139251),
    (0.09727698216676713, 0.02812242347121239, 0.07954712931871415)]
SPIKINGFORMER_8_512_LOG = dict(tokenizer=_TOKENIZER, blocks=_BLOCKS, block_ops=_BLOCK_OPS, qkv_rates=_QKV_RATES,
                               total_mac=0.347329512e9, total_ac=6.51754094076244e9, total_mJ=7.4635026,
                               source="zhouchenlin2096/Spikingformer imagenet/energy_consumption_logs/"
                                      "Spikingformer-8-512_log.txt")


def _spikingformer_8_512() -> dict[str, list[float]]:
    rates = {f"tokenizer.convs.{i}.conv": [ac / ops] for i, (ops, ac) in enumerate(_TOKENIZER)}
    for b, (acs, qkv) in enumerate(zip(_BLOCKS, _QKV_RATES)):
        for layer, ac, ops in zip(("attn.q", "attn.proj", "mlp.fc1", "mlp.fc2"), acs, _BLOCK_OPS):
            names = [f"blocks.{b}.attn.{n}.conv" for n in "qkv"] if layer == "attn.q" else [f"blocks.{b}.{layer}.conv"]
            rates.update({name: [ac / ops] for name in names})
        rates[f"blocks.{b}.attn.qkv"] = list(qkv)
    return rates


# model name -> (where the rates are published, {layer: firing rate of each input})
PUBLISHED_RATES = {"spikingformer_8_512": (SPIKINGFORMER_8_512_LOG["source"], _spikingformer_8_512())}


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
    return energy_from_probe(probe, x.shape[-4] if x.dim() == 4 else x.shape[1], T, model_name=model_name)
