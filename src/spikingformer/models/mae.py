"""Spikformer V2 masked-autoencoder pre-training (V2 §4.2, Fig. 6; SPEC §5).

A Spikformer V2 encoder (the classifier of ``create_model("spikformer_v2_...")`` without its
head, so its ``state_dict`` keys are exactly the classifier's backbone keys) sees a random 25 %
of the ``H/16 x W/16`` patches; a light ANN Transformer decoder (4 x 256 x 4, discarded after
pre-training) fills in the rest from a shared mask token and predicts every patch's pixels.
The loss is MAE's: mean squared error over the masked patches only, on per-patch normalized
pixels (``norm_pix_loss``).

No information leaks from masked patches into the encoder (MC-MAE / SparK, the paper's [74]
and [75]): the Spiking Convolutional Stem is a sparse convolution with sparse BN.  It computes
only the visible positions: each visible patch is a tile (16x16 pixels, then 8x8, 4x4, 2x2 and
1x1 positions through SCS blocks 1-4), every conv reads a tile plus, for a 3x3 conv, a one-position
halo from the neighbouring tiles, zero where they are masked (as a dense conv whose outputs are
zeroed outside the mask reads them), and BatchNorm statistics are those of the visible positions.  The
stem ends with one token per visible patch for the encoder blocks; with 75 % masked it does a
quarter of a dense stem's convolution work, which dominates a pre-training step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..nn.layers import ConvBN, run_blocks
from ..utils.errors import InputError
from ._base import GradCheckpointing
from ._registry import create_model

__all__ = ["MAEConfig", "MAEOutput", "SpikformerV2MAE", "random_masking", "patchify", "unpatchify",
           "sincos_pos_embed_2d", "visible_tiles", "neighbours", "with_halo", "tile_conv_bn"]


@dataclass(frozen=True)
class MAEConfig:
    encoder: str = "spikformer_v2_8_512"               # a registered Spikformer V2 (SCS stem) model
    encoder_args: dict = field(default_factory=dict)   # its config overrides (depth, dim, img_size, ...)
    T: int = 1                                         # V2 §4.2: one time step during pre-training
    mask_ratio: float = 0.75
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    norm_pix_loss: bool = True                         # targets: per-patch normalized pixels (V2 §5.2)

    def __post_init__(self):
        clash = sorted({"T", "num_classes"} & set(self.encoder_args))
        if clash:
            raise InputError(f"encoder_args must not set {clash}: T is MAEConfig.T and the encoder has no head")
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
            raise InputError(f"decoder_dim must be a multiple of 4 (2D sin-cos) and of decoder_heads "
                             f"{self.decoder_heads}, got {self.decoder_dim}")
        if self.decoder_depth < 1 or self.T < 1:
            raise InputError(f"decoder_depth and T must be >= 1, got {self.decoder_depth}, {self.T}")


class MAEOutput(NamedTuple):
    loss: Tensor      # scalar: MSE over masked patches
    pred: Tensor      # [B, N, p*p*C] predicted (normalized, with norm_pix_loss) pixels of every patch
    visible: Tensor   # [B, N] bool, True where the patch was shown to the encoder (the paper's M = 1)


def random_masking(batch: int, grid: tuple[int, int], mask_ratio: float, device=None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """MAE's per-sample uniform random masking of ``h*w`` patches (V2 §4.2 "Masking").

    Keeps ``int(N * (1 - mask_ratio))`` patches of each sample, drawn from ``generator`` (the
    default torch generator when None).  Returns ``ids_keep`` ``[B, N_v]`` (sorted: raster order,
    so gathered tokens keep their layout order) and ``visible`` ``[B, h, w]`` bool.
    """
    n = grid[0] * grid[1]
    n_keep = int(n * (1 - mask_ratio))
    if not 1 <= n_keep < n:
        raise InputError(f"mask_ratio {mask_ratio} keeps {n_keep} of {n} patches; at least one must be kept "
                         f"and one masked (use a larger image or another ratio)")
    noise = torch.rand(batch, n, generator=generator,
                       device=generator.device if generator is not None else device)
    ids_keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values.to(device)
    visible = torch.zeros(batch, n, dtype=torch.bool, device=ids_keep.device).scatter_(1, ids_keep, True)
    return ids_keep, visible.view(batch, *grid)


def patchify(imgs: Tensor, p: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, N, p*p*C]`` in raster patch order (MAE's layout: row, column, channel)."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, p: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of ``patchify``: ``[B, N, p*p*C]`` -> ``[B, C, h*p, w*p]``."""
    b, (h, w) = x.shape[0], grid
    c = x.shape[-1] // (p * p)
    x = torch.einsum("nhwpqc->nchpwq", x.reshape(b, h, w, p, p, c))
    return x.reshape(b, c, h * p, w * p)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], device=None) -> Tensor:
    """MAE's fixed 2D sine-cosine position embedding ``[h*w, dim]``: half the channels encode
    the row, half the column, each as ``sin``/``cos`` of ``pos / 10000^(2i/(dim/2))``."""
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=device),
                                torch.arange(w, dtype=torch.float64, device=device), indexing="ij")

    def embed(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    # MAE's get_2d_sincos_pos_embed puts the w-coordinate first.
    return torch.cat([embed(cols), embed(rows)], dim=1).float()


def visible_tiles(x: Tensor, ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
    """The tiles of the visible patches of a map ``x`` ``[T, B, C, H, W]``: ``[T, B, N_v, C, s, s]``, where
    ``s = H / h`` for the patch ``grid`` ``(h, w)``."""
    (h, w), (H, W) = grid, x.shape[-2:]
    if H % h or W % w or H // h != W // w:
        raise InputError(f"a {h}x{w} patch grid does not tile the {H}x{W} feature map")
    s = H // h
    windows = x.unfold(3, s, s).unfold(4, s, s)                     # a view [T, B, C, h, w, s, s]
    rows = torch.arange(len(ids_keep), device=ids_keep.device)[:, None]
    # advanced indices apart from each other go first: [B, N_v, T, C, s, s]
    return windows[:, rows, :, ids_keep // w, ids_keep % w].permute(2, 0, 1, 3, 4, 5)


def neighbours(ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, N_v, 3, 3]``: for each visible patch, the index (among the visible ones) of the patch above-left,
    above, ..., below-right of it, or ``N_v`` where that one is masked or beyond the map."""
    (b, n), (h, w) = ids_keep.shape, grid
    rows = torch.arange(b, device=ids_keep.device)[:, None, None, None]
    slot = torch.full((b, h + 2, w + 2), n, dtype=torch.long, device=ids_keep.device)
    r, c = ids_keep // w + 1, ids_keep % w + 1
    slot[rows[..., 0, 0], r, c] = torch.arange(n, device=ids_keep.device)
    step = torch.arange(-1, 2, device=ids_keep.device)
    return slot[rows, r[..., None, None] + step[:, None], c[..., None, None] + step]


def with_halo(tiles: Tensor, near: Tensor, p: int) -> Tensor:
    """``[T, B, N_v, C, s, s]`` tiles with a halo ``p`` wide from their ``neighbours`` ``near``: ``[T, B, N_v, C,
    s + 2p, s + 2p]``, zero where a neighbour is masked or beyond the map, as a dense map zeroed outside the mask
    would read.  Only tiles are read and written: nothing the size of the whole map."""
    t, b, n, c, s, _ = tiles.shape
    if not 0 < p <= s:
        raise InputError(f"a halo of {p} around {s}x{s} tiles reaches past the neighbouring patches")
    padded = torch.cat([tiles, tiles.new_zeros(t, b, 1, c, s, s)], 2)  # index N_v: the zero tile
    rows = torch.arange(b, device=tiles.device)[:, None]
    part = (slice(s - p, s), slice(0, s), slice(0, p))                 # of the tile above (left), beside, below
    return torch.cat([torch.cat([tiles if (i, j) == (1, 1) else padded[..., part[i], part[j]][:, rows, near[..., i, j]]
                                 for j in range(3)], -1) for i in range(3)], -2)


def tile_conv_bn(m: ConvBN, tiles: Tensor, near: Tensor) -> Tensor:
    """``ConvBN`` as a sparse convolution with sparse BN (SparK) on the visible tiles ``[T, B, N_v, C, s, s]``.

    A conv whose stride is its kernel (the SCS's 2x2 downsampling) reads within a tile; a ``k x k`` conv
    of stride 1 and padding ``(k - 1) / 2`` reads the tile and a halo of that width from its ``neighbours``
    ``near``, and runs unpadded on it.  The BN (training: batch statistics and running-stat updates; eval:
    running statistics) sees exactly the visible positions.
    """
    conv = m.conv
    t, b, n = tiles.shape[:3]
    (k, k2), (st, st2), (pad, pad2) = conv.kernel_size, conv.stride, conv.padding
    square = k == k2 and st == st2 and pad == pad2 and conv.dilation == (1, 1)
    if square and k == st and pad == 0:
        y = conv(tiles.flatten(0, 2))
    elif square and st == 1 and 2 * pad == k - 1:
        x = with_halo(tiles, near, pad).flatten(0, 2)
        if x.shape[-1] == k and conv.groups == 1:  # one output per tile: a matrix product (CPU convs are slow here)
            y = nn.functional.linear(x.flatten(1), conv.weight.flatten(1), conv.bias)[:, :, None, None]
        else:
            y = nn.functional.conv2d(x, conv.weight, conv.bias, 1, 0, conv.dilation, conv.groups)
    else:
        raise InputError(f"a sparse stem conv must read within its tile or have 'same' padding, got {conv}")
    y = m.bn(y)
    return y.view(t, b, n, *y.shape[1:])


class SpikformerV2MAE(GradCheckpointing, nn.Module):
    """Spikformer V2 encoder + ANN Transformer decoder for masked image modelling (V2 Fig. 6).

    ``self.encoder`` is a Spikformer V2 built by the registry with ``num_classes=0``: loading
    its ``state_dict`` into a classifier of the same name and ``encoder_args`` fills every
    backbone weight (``spikingformer.train.pretrain.load_pretrained_encoder``).
    ``set_grad_checkpointing()`` recomputes the sparse stem's segments (each conv and its neuron), the
    encoder's blocks and the decoder's blocks in the backward pass.
    """

    def __init__(self, cfg: MAEConfig = MAEConfig()):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.cfg = cfg
        self.encoder = create_model(cfg.encoder, **cfg.encoder_args, num_classes=0, T=cfg.T)
        if getattr(getattr(self.encoder, "cfg", None), "stem", None) != "scs":
            raise InputError(f"{cfg.encoder!r} is not a Spikformer V2 (SCS stem) model; MAE pre-training "
                             "needs one, e.g. spikformer_v2_8_512")
        self.patch_size = self.encoder.patch_size
        dim, ddim = self.encoder.cfg.dim, cfg.decoder_dim
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, cfg.decoder_heads, cfg.decoder_mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(ddim)
        self.decoder_pred = nn.Linear(ddim, self.patch_size ** 2 * self.encoder.cfg.in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # MAE: xavier-uniform Linear weights, zero biases, unit LayerNorm, N(0, 0.02) mask token.
        for name, m in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def _grid(self, x: Tensor) -> tuple[int, int]:
        if x.dim() != 4:
            raise InputError(f"MAE pre-training takes static images [B, C, H, W] (the pixels are the target), "
                             f"got shape {tuple(x.shape)}")
        self.encoder.check_input(x)
        return x.shape[2] // self.patch_size, x.shape[3] // self.patch_size

    def forward_encoder(self, x: Tensor, ids_keep: Tensor, visible: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> visible token features ``[T, B, N_v, D]``.

        The SCS runs on the visible patches' tiles only (``tile_conv_bn``), which it shrinks to one
        position each; those tokens enter the encoder blocks.  No conv reads a masked pixel: the first
        (2x2, stride 2) reads within a 16x16 patch, and every 3x3 conv reads zeros where a neighbour
        is masked.  ``visible`` ``[B, h, w]`` is ``ids_keep``'s patch grid.
        """
        x = self.encoder.check_input(x)
        stem, grid = self.encoder.stem, tuple(visible.shape[-2:])
        segments = [functools.partial(self._sparse_segment, a, b) for a, b in stem.segments]
        tiles = run_blocks(segments, visible_tiles(x, ids_keep, grid), neighbours(ids_keep, grid),
                           checkpointing=stem.grad_checkpointing, owner=stem)
        tokens = tiles.flatten(3)                                       # [T, B, N_v, D]: one position per tile
        return run_blocks(self.encoder.blocks, tokens, checkpointing=self.encoder.grad_checkpointing)

    def _sparse_segment(self, start: int, stop: int, x: Tensor, near: Tensor) -> Tensor:
        """Stem layers ``start:stop`` (one checkpointing segment) on the visible tiles and their ``neighbours``."""
        for layer in self.encoder.stem.layers[start:stop]:
            # a LIF is elementwise: on tiles as on the map
            x = tile_conv_bn(layer, x, near) if isinstance(layer, ConvBN) else layer(x)
        return x

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
        """Visible features ``[T, B, N_v, D]`` -> pixel predictions ``[B, N, p*p*C]`` for every patch.

        The spiking features are averaged over time (a no-op at ``T = 1``) and enter the ANN decoder
        at their positions; every other position gets the shared mask token; all get the fixed
        2D sin-cos position embedding (V2 §4.2 "Transformer decoder")."""
        vis = self.decoder_embed(latent.mean(0))                        # [B, N_v, Dd]
        b, _, ddim = vis.shape
        full = self.mask_token.to(vis.dtype).expand(b, grid[0] * grid[1], ddim)
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, ddim), vis)
        x = full + sincos_pos_embed_2d(ddim, grid, vis.device).to(vis.dtype)
        x = run_blocks(self.decoder_blocks, x, checkpointing=self.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))

    def target(self, imgs: Tensor) -> Tensor:
        """Patchified pixels, per-patch normalized when ``norm_pix_loss`` (MAE: unbiased variance, eps 1e-6)."""
        t = patchify(imgs, self.patch_size)
        if self.cfg.norm_pix_loss:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def loss(self, imgs: Tensor, pred: Tensor, visible: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only."""
        per_patch = (pred.float() - self.target(imgs).float()).pow(2).mean(-1)
        masked = (~visible.flatten(1)).float()
        return (per_patch * masked).sum() / masked.sum()

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> MAEOutput:
        grid = self._grid(imgs)
        ids_keep, visible = random_masking(imgs.shape[0], grid, self.cfg.mask_ratio, imgs.device, generator)
        pred = self.forward_decoder(self.forward_encoder(imgs, ids_keep, visible), ids_keep, grid)
        return MAEOutput(self.loss(imgs, pred, visible), pred, visible.flatten(1))

    @torch.no_grad()
    def reconstruct(self, imgs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(masked, reconstruction)`` images ``[B, C, H, W]`` in the input's space, for pictures (Fig. 8).

        ``masked`` is the input with masked patches zeroed; ``reconstruction`` pastes the
        prediction (de-normalized with each patch's own mean/std, as MAE's visualisation) into the
        masked patches and keeps the visible ones."""
        out = self(imgs, generator)
        p, grid = self.patch_size, (imgs.shape[2] // self.patch_size, imgs.shape[3] // self.patch_size)
        patches = patchify(imgs, p)
        pred = out.pred.float()
        if self.cfg.norm_pix_loss:
            pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
        vis = out.visible.unsqueeze(-1)
        masked = unpatchify(patches * vis, p, grid)
        return masked, unpatchify(torch.where(vis, patches, pred), p, grid)
