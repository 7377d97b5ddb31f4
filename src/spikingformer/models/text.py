"""Spikingformer for natural language (Spikingformer paper, "Natural Language Understanding", Table 4).

The vision recipe (Eq. 6-18) applied to token sequences:

- Encoding layer: token + learned position (+ segment, for sentence pairs) embeddings and
  BERT's embedding LayerNorm, real-valued, computed once and repeated over ``T`` (direct
  encoding, SPEC §1).  It plays the part of the vision model's first ConvBN.
- ``depth`` MS-residual blocks exactly as Spikingformer's (Eq. 7-8): ``X += PSSA(X)``,
  ``X += SMLP(X)``, every synaptic layer preceded by ``SN``, Q/K/V = ``SN(BN(Linear(SN(X))))``,
  ``A = Q K^T V * s`` (Eq. 14), ``SN_attn`` at ``V_th = 0.5``, then the projection.  The
  residual stream stays real-valued; every Linear inside the blocks sees 0/1 spikes.
- Two read-outs (the paper's head, left out of Eq. 20): ``MLMHead`` per token for masked-LM
  pre-training (decoder weight *tied* to the token embedding, as BERT) and ``SequenceHead``
  (mean over real tokens and ``T``, then Linear; Eq. 15 with a padding-aware pool) for GLUE.

Padding: ``attention_mask`` (default ``input_ids != pad_id``) marks real tokens.  Pad tokens'
K and V spikes are zeroed, so they add nothing to ``K^T V`` (or ``Q K^T``); and in training
every BatchNorm takes its statistics over real tokens only (``MaskedLinearBN``).  Each layer is
otherwise per token, so in eval mode appending pads changes no real token's output.

Time-major ``[T, B, N, D]`` inside, as the rest of the library.  The named sizes are in the one
registry (``create_model("spikingformer_text_2_128")``) with modality ``"text"``
(``list_models(modality="text")``, ``model_modality(name)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.layers import ClassifierHead, LinearBN, run_blocks, running_mean
from ..utils.errors import InputError
from ._base import GradCheckpointing, SpikingVisionModel, build_config
from ._blocks import Block, SpikingMLP, SpikingSelfAttention
from ._registry import register_model

__all__ = ["TextConfig", "TextEmbedding", "MaskedLinearBN", "TextPSSA", "TextSMLP", "TextBlock", "MLMHead",
           "SequenceHead", "SpikingformerText", "TEXT_HEADS"]

TEXT_HEADS = ("sequence", "mlm")


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 30522     # bert-base-uncased WordPiece
    max_len: int = 128          # longest sequence (learned positions)
    type_vocab_size: int = 2    # segments A / B of a sentence pair
    depth: int = 2
    dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    T: int = 4
    tau: float = 2.0
    attn_scale: float = 0.125
    attn_threshold: float = 0.5
    head: str = "sequence"      # "sequence": [B, num_classes] logits; "mlm": [B, N, vocab_size] logits
    num_classes: int = 2        # sequence head outputs (1: regression, STS-B)
    pad_id: int = 0

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise InputError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head not in TEXT_HEADS:
            raise InputError(f"unknown head {self.head!r}; valid heads: {', '.join(TEXT_HEADS)}")
        if min(self.T, self.depth, self.max_len, self.type_vocab_size, self.num_classes) < 1:
            raise InputError("T, depth, max_len, type_vocab_size and num_classes must be >= 1")
        if not 0 <= self.pad_id < self.vocab_size:
            raise InputError(f"pad_id {self.pad_id} is outside the vocabulary of {self.vocab_size}")


class TextEmbedding(nn.Module):
    """Encoding layer: ``LayerNorm(E_tok[x] + E_pos[n] + E_seg[s])`` -> ``[B, N, D]``, real-valued."""

    def __init__(self, vocab_size: int, max_len: int, type_vocab_size: int, dim: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.seg = nn.Embedding(type_vocab_size, dim)
        self.norm = nn.LayerNorm(dim)  # per token: unit-scale input for the first SN, blind to padding

    def forward(self, ids: Tensor, segs: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.tok(ids) + self.pos(pos) + self.seg(segs))


class MaskedLinearBN(LinearBN):
    """``LinearBN`` whose BatchNorm, given a token mask ``[B, N]``, normalizes real tokens only.

    Training statistics then ignore padding; pad positions are set to 0 (nothing reads them:
    their K/V spikes are zeroed and every other layer is per token).  Same parameters and
    state as ``LinearBN``; in eval mode the result on real tokens is identical to it.  A batch
    without padding passes ``mask=None`` (``SpikingformerText`` decides that once per forward).
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = self.linear(x)                          # [T, B, N, D']
        if mask is None:
            # LinearBN's statistics (over T, B, N per channel) on a contiguous [T*B*N, D'] layout: much faster
            # on CPU than BatchNorm1d over the transposed [T*B, D', N] view.
            return self.bn(y.flatten(0, 2)).view_as(y)
        keep = mask.unsqueeze(0).expand(y.shape[:3])
        out = y.new_zeros(y.shape)
        out[keep] = self.bn(y[keep])                # BatchNorm1d over [real tokens, D']
        return out


class TextPSSA(SpikingSelfAttention):
    """PSSA (Eq. 12-14) on ``[T, B, N, D]``: ``Q, K, V = SN(BN(Linear(SN(X))))``, ``A = Q K^T V * s``,
    out ``BN(Linear(SN_attn(A)))``.  Pad tokens' K and V spikes are zeroed."""

    synapse, pre_activation = MaskedLinearBN, True


class TextSMLP(SpikingMLP):
    """Spiking MLP: ``BN(Linear_2(SN(BN(Linear_1(SN(X))))))``, hidden ``mlp_ratio * D``."""

    synapse, pre_activation = MaskedLinearBN, True


class TextBlock(Block):
    """MS-residual block (Eq. 7-8): ``X += PSSA(X)``; ``X += SMLP(X)``, with the padding mask."""

    attn_layer, mlp_layer = TextPSSA, TextSMLP


class SequenceHead(ClassifierHead):
    """Eq. 15 (``FC(AvgPool(X))``) with the pool over real tokens and ``T`` only.

    A ``ClassifierHead`` so that ``SynapticProbe`` counts it as the read-out.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__(dim, num_classes, "avgpool_fc")

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        w = mask[None, :, :, None].to(x.dtype)
        return self.fc((x * w).sum(dim=(0, 2)) / (w.sum(dim=(0, 2)) * x.shape[0]))

    def forward_steps(self, x: Tensor, mask: Tensor) -> Tensor:
        """``[T, B, classes]``: the read-out of steps ``1..t`` (``ClassifierHead.forward_steps``), real tokens only."""
        w = mask[None, :, :, None].to(x.dtype)
        return self.fc(running_mean((x * w).sum(dim=2)) / w.sum(dim=2))


class MLMHead(ClassifierHead):
    """Masked-LM read-out per token: ``W_tok LayerNorm(mean_T X) + b``, ``W_tok`` tied to the token
    embedding (as BERT).  Takes ``[T, ..., D]`` (e.g. only the masked positions) -> ``[..., V]``."""

    def __init__(self, embedding: nn.Embedding):
        vocab, dim = embedding.weight.shape
        super().__init__(dim, vocab, "avgpool_fc")
        self.norm = nn.LayerNorm(dim)
        self.fc.weight = embedding.weight  # nanoGPT-style tying: one Parameter, two modules

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x.mean(0)))

    def forward_steps(self, x: Tensor) -> Tensor:
        """``[T, ..., V]``: the read-out of steps ``1..t`` (``ClassifierHead.forward_steps``)."""
        return self.fc(self.norm(running_mean(x)))


class SpikingformerText(GradCheckpointing, nn.Module):
    """Spikingformer over token sequences: ``TextEmbedding`` (direct encoding over ``T``),
    ``depth`` ``TextBlock`` s and one read-out (``cfg.head``).

    ``forward(input_ids [B, N], token_type_ids=None, attention_mask=None)`` returns sequence
    logits ``[B, num_classes]`` or masked-LM logits ``[B, N, vocab_size]``.
    """

    # The encoding is an embedding lookup, not a synaptic layer: every Linear, the first one
    # included, must receive spikes (``probe.SynapticProbe``).
    synaptic_encoding = False

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = TextEmbedding(cfg.vocab_size, cfg.max_len, cfg.type_vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(
            TextBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.tau, cfg.attn_scale, cfg.attn_threshold)
            for _ in range(cfg.depth))
        self.head = MLMHead(self.embed.tok) if cfg.head == "mlm" else SequenceHead(cfg.dim, cfg.num_classes)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        SpikingVisionModel._init_module(m)
        if isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)

    @property
    def T(self) -> int:
        return self.cfg.T

    @property
    def num_classes(self) -> int:
        return self.cfg.vocab_size if self.cfg.head == "mlm" else self.cfg.num_classes

    def check_input(self, ids: Tensor, segs: Tensor | None,
                    mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, bool]:
        """Validate the batch; return ``(ids, segs, mask, padded)`` with the defaults filled in
        (``padded``: some token is padding).  The value checks read the device once, not per check."""
        name = type(self).__name__
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            got = f"shape {tuple(ids.shape)}, dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
            raise InputError(f"{name} expects input_ids as a [B, N] int64 tensor, got {got}")
        b, n = ids.shape
        if not 1 <= n <= self.cfg.max_len:
            raise InputError(f"sequence length {n} must be in 1..max_len={self.cfg.max_len}")
        segs = torch.zeros_like(ids) if segs is None else segs
        mask = ids != self.cfg.pad_id if mask is None else mask.bool()
        for what, t in (("token_type_ids", segs), ("attention_mask", mask)):
            if t.shape != ids.shape:
                raise InputError(f"{what} has shape {tuple(t.shape)}, input_ids {tuple(ids.shape)}")
        if not ids.numel():
            return ids, segs, mask, False
        lo, hi, seg_lo, seg_hi, every_row, no_pad = torch.stack([
            ids.min(), ids.max(), segs.min(), segs.max(), mask.any(dim=1).all(), mask.all()]).tolist()
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise InputError(f"token ids must lie in [0, {self.cfg.vocab_size}), got [{lo}, {hi}]")
        if seg_lo < 0 or seg_hi >= self.cfg.type_vocab_size:
            raise InputError(f"token_type_ids must lie in [0, {self.cfg.type_vocab_size})")
        if not every_row:
            raise InputError("every sequence needs at least one real (non-pad) token")
        return ids, segs, mask, not no_pad

    def forward_features(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                         attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> the residual stream ``[T, B, N, D]`` and the real-token mask ``[B, N]``."""
        ids, segs, mask, padded = self.check_input(input_ids, token_type_ids, attention_mask)
        x = self.embed(ids, segs)
        x = x.unsqueeze(0).expand(self.cfg.T, *x.shape)  # direct encoding: the same input every step
        # whether to mask is decided once here, not in every layer
        return run_blocks(self.blocks, x, mask if padded else None, checkpointing=self.grad_checkpointing), mask

    def forward_head(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.head(x) if self.cfg.head == "mlm" else self.head(x, mask)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        return self.forward_head(*self.forward_features(input_ids, token_type_ids, attention_mask))

    def forward_steps(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                      attention_mask: Tensor | None = None) -> Tensor:
        """Logits after each time step, ``[T, ...]`` of ``forward``'s shape: what an inference given ``t`` steps
        answers (neurons never look ahead), from one pass, as the vision models' ``forward_steps``."""
        x, mask = self.forward_features(input_ids, token_type_ids, attention_mask)
        return self.head.forward_steps(x) if self.cfg.head == "mlm" else self.head.forward_steps(x, mask)


# ---------------------------------------------------------------- named sizes

@register_model(modality="text")
def spikingformer_text_2_128(**kw) -> SpikingformerText:
    """CPU-sized: 2 blocks, D 128, 4 heads, 128 tokens; 4.3M parameters (3.9M of them the embedding)."""
    return SpikingformerText(build_config(TextConfig, dict(depth=2, dim=128, num_heads=4, max_len=128), kw))


@register_model(modality="text")
def spikingformer_text_12_768(**kw) -> SpikingformerText:
    """BERT-base-like: 12 blocks, D 768, 12 heads, 512 tokens."""
    return SpikingformerText(build_config(TextConfig, dict(depth=12, dim=768, num_heads=12, max_len=512), kw))
