"""STOP (docs/design.md §3): spatial-temporal dynamic prompting.

STOP layer ``i`` (``i = 1 .. stop.layers``) works on the input of transformer block ``i``,
using the CLS attention of block ``i - 1`` (the last attention the tokens went through, so
no extra attention pass is needed). Scorer and prompters start from a shared bottleneck
(LayerNorm -> Linear D -> h), which keeps them cheap: at ViT-B/32, 12 frames, STOP adds
~0.1 GFLOPs to TempMe's ~35.

* Intra-frame spatial prompting: every patch token gets a score
  ``W = a * A + (1 - a) * M`` (``A``: CLS-to-patch attention; ``M``: a temporal dynamics map
  from a Conv3d over the ``T x H' x W'`` patch grid). The top ``N_s`` tokens of each frame get
  a prompt from the intra-frame prompter (Conv3d over frames t-1, t, t+1 -> ReLU -> Conv3d ->
  Linear -> ReLU -> Linear -> Dropout). The selection is hard in the forward pass and
  straight-through in the backward pass, so the scorer trains.
* Inter-frame temporal prompting: frame variation ``W_t = mean_p (1 + b * r_p) ||dh_p||^2 / D``
  (``dh``: difference of layer-normalised prompted tokens of frames t and t-1, ``r``: the
  region mask) switches on ``ceil(eta * W_t)`` of ``P`` prompt tokens made by the inter-frame
  prompter (``P`` learned queries attending over the frame difference -> Conv3d -> ReLU ->
  Conv3d -> Dropout -> Linear; dropout sits before the Linear so that the Linear can be
  folded into the block's key/value weights). Frame t carries the prompts of boundary
  t-1 -> t (frame 0 those of 0 -> 1). ``||dh||^2`` is divided by the width ``D`` so ``eta``
  means the same for any backbone.

Prompt tokens are deep prompts: each STOP layer inserts fresh ones into every frame's
attention and drops them after it, so they are never merged and are gone long before
ClipMe. As a deep prompt's own output would be replaced at the next layer anyway, only its
key and value are computed, straight from the prompter's hidden code (see
:func:`tempstop.model.blocks.prompt_kv_from_code`); they enter attention through a
zero-initialised gate. With the spatial prompter's last Linear also zero, an untrained STOP
is exactly the identity.

After ImgMe merges, tokens no longer sit on a grid: ``src`` (which token holds each input
patch) rebuilds the grid for the convolutions and maps results back to tokens. Padded
frames are zeroed before every temporal convolution and boundaries touching them carry no
active prompt, so they cannot influence real frames. Nothing is normalised across videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tempstop.config import StopConfig
from tempstop.model.merge import MASKED_BIAS, add_rows, put_rows, take_rows


@dataclass
class FrameGrid:
    """Where the patch grid of every frame is (``B`` videos of ``T`` frames, ``gh x gw`` patches)."""

    src: torch.Tensor  # [B*T, gh*gw] long: index of the patch token holding each input patch
    valid: torch.Tensor  # [B, T] bool
    batch: int
    frames: int
    gh: int
    gw: int


def to_grid(z: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
    """Token features ``[B*T, Np, c]`` -> patch grid ``[B, c, T, gh, gw]``, padded frames zeroed."""
    c = z.shape[-1]
    cells = take_rows(z, grid.src)  # [BT, gh*gw, c]
    cells = cells * grid.valid.reshape(-1, 1, 1).to(cells.dtype)
    cells = cells.view(grid.batch, grid.frames, grid.gh, grid.gw, c)
    return cells.permute(0, 4, 1, 2, 3).contiguous()


def grid_to_tokens(g: torch.Tensor, grid: FrameGrid, n_tokens: int, mean: bool) -> torch.Tensor:
    """Patch grid ``[B, c, T, gh, gw]`` -> tokens ``[B*T, Np, c]`` (sum or mean of each token's cells)."""
    c = g.shape[1]
    cells = g.permute(0, 2, 3, 4, 1).reshape(grid.batch * grid.frames, grid.gh * grid.gw, c)
    out = add_rows(cells.new_zeros(cells.shape[0], n_tokens, c), grid.src, cells)
    if mean:
        count = torch.zeros(cells.shape[0], n_tokens, device=g.device, dtype=cells.dtype)
        count.scatter_add_(1, grid.src, torch.ones_like(grid.src, dtype=cells.dtype))
        out = out / count.clamp_min(1)[..., None]
    return out


def conv3d(conv: nn.Conv3d, g: torch.Tensor) -> torch.Tensor:
    """``conv(g)`` for ``g`` ``[B, C, T, H, W]`` (stride 1, odd kernels, zero padding).

    On a CPU, PyTorch sends a single video's small Conv3d to a slow im2col path (its fast
    path needs a batch > 1 or a large input); there the same sum is computed as one Conv2d
    per temporal offset with the frames as the batch, about 4x faster, same weights.
    """
    if g.device.type != "cpu" or g.shape[0] > 1:
        return conv(g)
    b, c, t, height, width = g.shape
    pad_t = conv.padding[0]
    frames = g.transpose(1, 2).reshape(b * t, c, height, width)  # [B*T, C, H, W]
    out = torch.zeros(b, t, conv.out_channels, height, width, dtype=g.dtype, device=g.device)
    for dt in range(conv.kernel_size[0]):
        y = F.conv2d(frames, conv.weight[:, :, dt], None, 1, conv.padding[1:])
        y = y.view(b, t, -1, height, width)  # output frame i sees input frame i + dt - pad_t
        shift = dt - pad_t
        lo, hi = max(0, -shift), min(t, t - shift)
        if lo < hi:
            out[:, lo:hi] += y[:, lo + shift : hi + shift]
    if conv.bias is not None:
        out = out + conv.bias.view(1, 1, -1, 1, 1)
    return out.transpose(1, 2)  # [B, C', T, H, W]


def boundary_valid(valid: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: frame t's boundary (t-1 -> t; 0 -> 1 for frame 0) has two real frames."""
    if valid.shape[1] < 2:
        return torch.zeros_like(valid)
    prev = torch.cat([valid[:, 1:2], valid[:, :-1]], dim=1)
    return valid & prev


def frame_difference(g: torch.Tensor) -> torch.Tensor:
    """``[B, T, ...]`` -> frame t minus frame t-1 (frame 0: frame 0 minus frame 1)."""
    if g.shape[1] < 2:
        return torch.zeros_like(g)
    return g - torch.cat([g[:, 1:2], g[:, :-1]], dim=1)


class StopLayer(nn.Module):
    """The STOP modules of one layer: region scorer, intra- and inter-frame prompters."""

    def __init__(self, width: int, heads: int, cfg: StopConfig):
        super().__init__()
        h, p = cfg.hidden_dim, cfg.max_temporal_prompts
        self.cfg = cfg
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, h)  # shared bottleneck of scorer and prompters
        self.scorer = nn.Conv3d(h, 1, 3, padding=1)  # temporal dynamics map M
        self.conv1 = nn.Conv3d(h, h, 3, padding=1)  # frames t-1, t, t+1 x 3 x 3 patches
        self.conv2 = nn.Conv3d(h, h, (1, 3, 3), padding=(0, 1, 1))
        self.fc1 = nn.Linear(h, h)
        self.fc2 = nn.Linear(h, width)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.zeros_(self.fc2.weight)  # untrained STOP = identity
        nn.init.zeros_(self.fc2.bias)
        if p > 0:
            self.queries = nn.Parameter(torch.randn(p, h) * h**-0.5)  # the temporal prompt tokens
            self.key = nn.Linear(h, h)
            self.value = nn.Linear(h, h)
            self.tconv1 = nn.Conv3d(h, h, (3, 1, 1), padding=(1, 0, 0))  # across neighbouring boundaries
            self.tconv2 = nn.Conv3d(h, h, (3, 1, 1), padding=(1, 0, 0))
            self.out = nn.Linear(h, width)  # into the block's attention-input space
            self.gate = nn.Parameter(torch.zeros(heads))  # zero: prompts start switched off

    def forward(
        self, x: torch.Tensor, cls_attn: torch.Tensor, grid: FrameGrid
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Prompt frames ``x`` ``[B*T, 1 + Np, D]`` (CLS first) given ``cls_attn`` ``[B*T, Np]``.

        Returns the prompted tokens, the temporal prompts' hidden code ``[B*T, P, h]`` and
        which of them are active ``[B*T, P]`` (None, None without temporal prompts).
        """
        d = x.shape[-1]
        # Normalised once (on the contiguous sequence: a strided slice is much slower), shared by
        # the bottleneck (the norm's affine is folded into ``down``) and the frame variation.
        h_all = F.layer_norm(x, (d,))  # [BT, 1 + Np, D]
        z = self._bottleneck(h_all)[:, 1:]  # [BT, Np, h]: a Linear on the strided slice would copy it
        g = to_grid(z, grid)  # [B, h, T, gh, gw]
        sel, gate = self._select(g, z.shape[1], cls_attn, grid)  # [BT, Ns]
        feat = conv3d(self.conv2, F.relu(conv3d(self.conv1, g)))  # [B, h, T, gh, gw]
        feat = grid_to_tokens(feat, grid, z.shape[1], mean=True)  # [BT, Np, h]
        feat = take_rows(feat, sel)  # [BT, Ns, h]
        prompt = self.drop(self.fc2(F.relu(self.fc1(feat)))) * gate[..., None].to(x.dtype)  # [BT, Ns, D]
        pos = sel + 1  # the selected tokens' positions in the sequence (CLS comes first)
        out = add_rows(x, pos, prompt)  # prompts added to the selected patch tokens
        if self.cfg.max_temporal_prompts == 0:
            return out, None, None
        # Only the N_s prompted tokens changed: renormalise those, not the whole frame.
        h_sel = F.layer_norm(take_rows(out, pos), (d,))  # [BT, Ns, D]
        region = torch.zeros_like(cls_attn).scatter(1, sel, gate.to(cls_attn.dtype))  # [BT, Np], 1 on r_t
        z = put_rows(z, sel, self._bottleneck(h_sel))
        with torch.no_grad():
            h_prompted = put_rows(h_all, pos, h_sel)  # [BT, 1 + Np, D] normalised prompted tokens
        code, active = self._temporal(h_prompted, z, region, grid)
        return out, code, active

    def _bottleneck(self, h: torch.Tensor) -> torch.Tensor:
        """``down(norm(x))`` from the normalised ``h = layer_norm(x)``: the norm's affine folded
        into the Linear (``[..., D] -> [..., h]``), one pass over the tokens instead of two."""
        weight = self.down.weight * self.norm.weight.to(self.down.weight.dtype)  # [h, D]
        bias = self.down.bias + self.down.weight @ self.norm.bias.to(self.down.weight.dtype)
        return F.linear(h, weight.to(h.dtype), bias.to(h.dtype))

    def _select(
        self, g: torch.Tensor, n_tokens: int, cls_attn: torch.Tensor, grid: FrameGrid
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-N_s tokens by ``W = a A + (1 - a) M`` and their straight-through gates (value 1)."""
        m = conv3d(self.scorer, g).view(-1, grid.gh * grid.gw).float().softmax(dim=-1)  # [BT, gh*gw]
        m_tok = torch.zeros_like(cls_attn).scatter_add(1, grid.src, m)  # [BT, Np]
        a_tok = cls_attn / cls_attn.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        alpha = self.cfg.score_alpha
        w = alpha * a_tok + (1 - alpha) * m_tok
        sel = w.detach().topk(min(self.cfg.num_regions, n_tokens), dim=-1).indices  # [BT, Ns]
        w_sel = w.gather(1, sel)
        return sel, 1.0 + w_sel - w_sel.detach()

    def _temporal(
        self, h: torch.Tensor, z: torch.Tensor, region: torch.Tensor, grid: FrameGrid
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inter-frame prompts: hidden code ``[B*T, P, h]`` and active mask ``[B*T, P]``;
        ``h`` ``[B*T, 1 + Np, D]``: the layer-normalised prompted tokens, CLS first."""
        b, t, n_cells = grid.batch, grid.frames, grid.gh * grid.gw
        bvalid = boundary_valid(grid.valid)  # [B, T]
        r_cell = region.gather(1, grid.src).view(b, t, n_cells)  # [B, T, cells]
        g = to_grid(z, grid).permute(0, 2, 3, 4, 1).reshape(b, t, n_cells, -1)  # [B, T, cells, h]
        dz = frame_difference(g) * bvalid[..., None, None].to(g.dtype)
        logits = torch.einsum("ph,btnh->btpn", self.queries, self.key(dz)) * dz.shape[-1] ** -0.5
        logits = logits + torch.log1p(self.cfg.beta * r_cell)[:, :, None, :].to(logits.dtype)
        code = logits.softmax(dim=-1) @ self.value(dz)  # [B, T, P, h]
        code = code.permute(0, 3, 1, 2)[..., None]  # [B, h, T, P, 1]
        code = self.tconv2(F.relu(self.tconv1(code)))[..., 0].permute(0, 2, 3, 1)  # [B, T, P, h]
        code = self.drop(code).reshape(b * t, -1, code.shape[-1])
        with torch.no_grad():
            variation = self._variation(h, r_cell, grid)  # [B, T]
            p = self.cfg.max_temporal_prompts
            n_active = torch.ceil(self.cfg.eta * variation).clamp(0, p) * bvalid
            active = torch.arange(p, device=code.device) < n_active.reshape(-1, 1)  # [BT, P]
        return code, active

    def _variation(self, h: torch.Tensor, r_cell: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
        """``W_t = mean over cells of (1 + b r) ||dh||^2 / D`` from the layer-normalised tokens
        ``h`` ``[B*T, 1 + Np, D]`` (CLS first; scale-free: W_t means the same at any width),
        ``[B, T]``."""
        b, t, d = grid.batch, grid.frames, h.shape[-1]
        if t < 2:
            return h.new_zeros(b, t, dtype=torch.float32)
        cells = take_rows(h, grid.src + 1).float().view(b, t, -1, d)  # [B, T, cells, D]
        # boundaries t-1 -> t for t >= 1; frame 0's (0 -> 1) is the same as frame 1's
        dh2 = torch.linalg.vector_norm(cells[:, 1:] - cells[:, :-1], dim=-1).square() / d  # [B, T-1, cells]
        dh2 = torch.cat([dh2[:, :1], dh2], dim=1)  # [B, T, cells]
        return ((1 + self.cfg.beta * r_cell.float()) * dh2).mean(dim=-1)

    def prompt_bias(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention bias ``[B*T, 1, 1, P]`` masking inactive prompts, and rows with any active."""
        bias = torch.where(active, 0.0, MASKED_BIAS)[:, None, None, :]
        return bias, active.any(dim=-1)


class STOP(nn.Module):
    """All STOP parameters: one :class:`StopLayer` per prompted visual layer (``n_layers``) and
    optional deep text prompts (``text_prompts`` tokens in the first ``n_layers`` text layers,
    gated)."""

    def __init__(
        self,
        cfg: StopConfig,
        n_layers: int,
        width: int,
        heads: int,
        text_width: int,
        text_heads: int,
        text_depth: int,
    ):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(StopLayer(width, heads, cfg) for _ in range(n_layers))
        n_text = min(n_layers, text_depth) if cfg.text_prompts > 0 else 0
        self.text_prompts = (
            nn.Parameter(torch.randn(n_text, cfg.text_prompts, text_width) * 0.02) if n_text else None
        )
        self.text_gates = nn.Parameter(torch.zeros(n_text, text_heads)) if n_text else None

    @property
    def num_text_layers(self) -> int:
        return 0 if self.text_prompts is None else self.text_prompts.shape[0]
