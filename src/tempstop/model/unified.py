"""UnifiedTempMeSTOPModel (docs/design.md §4) and its factory.

Variants (``model.variant``) are configurations of the same model:

========  ==========================  ==============================================
variant   modules                     training loss (``total_loss``)
========  ==========================  ==============================================
unified   TempMe + STOP               ``w_t * tempme_loss + w_s * stop_loss``
tempme    TempMe (LoRA + merging)     ``tempme_loss`` (``stop_loss`` reported as 0)
stop      STOP on plain CLIP          ``stop_loss`` (``tempme_loss`` reported as 0)
meanP     plain CLIP, mean pooling    InfoNCE of the mean-pooled embedding (both 0)
========  ==========================  ==============================================

``tempme_loss`` scores the final (merged) video embedding; ``stop_loss`` the mean of the
STOP-prompted frame CLS tokens just before the first ClipMe layer (without ClipMe: the final
embedding). Either way a video embedding is ``mean over valid frames of
normalize(proj(ln_post(CLS_t)))``, normalised.

``forward`` computes no loss: it returns the embeddings and the logit scale. The loss is its
own module, :class:`tempstop.losses.RetrievalLoss`; the model holds one as ``model.loss`` only
because the user's guide puts ``compute_training_loss`` on the model (``model.loss(model(...))``,
what the trainer trains, so a subclass can add terms).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tempstop.config import MODE_GROUPS, PARAM_GROUPS, ModelConfig, UnifiedModelConfig, load_config
from tempstop.losses import RetrievalLoss
from tempstop.model.backbone import create_clip, get_tokenizer
from tempstop.model.stop import STOP
from tempstop.model.tempme import TempMe, first_clip_layer
from tempstop.model.text import encode_tokens
from tempstop.model.vision import VideoFeatures, encode_frames

log = logging.getLogger(__name__)


class UnifiedTempMeSTOPModel(nn.Module):
    """CLIP (open_clip) + TempMe + STOP for text-to-video retrieval.

    Submodules: ``clip`` (the backbone, parameter group ``backbone``), ``tempme`` (LoRA and
    clip positional embeddings, group ``tempme``; None for the stop/meanP variants) and
    ``stop`` (prompters, scorers, prompt tokens, group ``stop``; None for tempme/meanP).
    """

    def __init__(self, cfg: ModelConfig, tempme_loss_weight: float = 1.0, stop_loss_weight: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.clip = create_clip(cfg)
        visual, text = self.clip.visual, self.clip.transformer
        width, depth = visual.transformer.width, len(visual.transformer.resblocks)
        heads = visual.transformer.resblocks[0].attn.num_heads
        text_heads = text.resblocks[0].attn.num_heads
        self.embed_dim = int(visual.output_dim)
        use_tempme = cfg.variant in ("unified", "tempme") and cfg.tempme.enabled
        patch = int(visual.conv1.kernel_size[0])
        self.tempme = (
            TempMe(cfg.tempme, cfg.frames, width, depth, text.width, len(text.resblocks), patch)
            if use_tempme
            else None
        )
        n_stop = 0
        if cfg.variant in ("unified", "stop") and cfg.stop.enabled:
            n_stop = _stop_layers(cfg, self.tempme, depth)
        self.stop = (
            STOP(cfg.stop, n_stop, width, heads, text.width, text_heads, len(text.resblocks))
            if n_stop
            else None
        )
        self.loss = RetrievalLoss(tempme_loss_weight, stop_loss_weight)
        self._tokenizer = None
        self.training_mode = "joint"
        self.set_training_mode("joint")

    # ---- text ----------------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log temperature (clamped to ln 100 where used)."""
        return self.clip.logit_scale

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    @property
    def num_frames(self) -> int:
        """Frames per video the model takes (``model.frames``); shorter videos are fine."""
        return self.cfg.frames

    @property
    def image_size(self) -> int:
        """Frame size in pixels the vision tower takes."""
        return int(self.clip.visual.image_size[0])

    def tokenize(self, texts: list[str], max_words: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's tokenizer -> ``(input_ids [B, L], attention_mask [B, L])``, ``L`` = max
        words (capped at the text tower's context length)."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.cfg, self.context_length)
        length = min(max_words or self.context_length, self.context_length)
        ids = self._tokenizer(list(texts), context_length=length)
        return ids, (ids != 0).long()

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sentence embeddings ``[B, E]``, L2-normalised (EOT token features)."""
        if attention_mask is not None:
            # Causal attention: trailing padding cannot change the EOT token, so drop it.
            length = max(int(attention_mask.sum(dim=-1).max()), 1)
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        feats = encode_tokens(self.clip, input_ids, attention_mask, self.tempme, self.stop)
        return F.normalize(feats, dim=-1)

    # ---- video ---------------------------------------------------------------------
    def video_features(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None, record: bool = False
    ) -> VideoFeatures:
        """Per-frame CLS tokens of the vision tower (final and before ClipMe), see ``encode_frames``."""
        if video.dim() != 5:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        if self.tempme is not None and video.shape[1] > self.cfg.frames:
            raise ValueError(
                f"video has {video.shape[1]} frames but the model takes at most model.frames={self.cfg.frames}"
            )
        if video_mask is None:
            video_mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
        return encode_frames(self.clip.visual, video, video_mask, self.tempme, self.stop, record)

    def pool_frames(self, frame_cls: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T, W]`` CLS tokens -> ``ln_post`` -> ``proj`` -> normalise -> mean over valid
        frames -> normalise, ``[B, E]``."""
        visual = self.clip.visual
        emb = F.normalize(visual.ln_post(frame_cls) @ visual.proj, dim=-1)  # [B, T, E]
        m = video_mask.to(emb.dtype)[..., None]  # [B, T, 1]
        emb = (emb * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
        return F.normalize(emb, dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Video embeddings ``[B, E]``, L2-normalised; padded frames (mask 0) change nothing."""
        if video_mask is None:
            video_mask = torch.ones(video.shape[:2], dtype=torch.bool, device=video.device)
        feats = self.video_features(video, video_mask)
        return self.pool_frames(feats.frame_cls, video_mask)

    # ---- training ------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Embeddings of a batch of (video, text) pairs: ``{"text", "video", "tempme_video",
        "stop_video", "logit_scale"}``, each ``[B, E]`` and L2-normalised (``logit_scale``
        the raw parameter). ``video`` is the retrieval embedding; ``tempme_video`` and
        ``stop_video`` are what each module's loss scores (None without the module; for the
        unified model ``stop_video`` pools the prompted frames before the first ClipMe layer).
        """
        mask = video_mask.to(torch.bool)
        feats = self.video_features(video, mask)
        final = self.pool_frames(feats.frame_cls, mask)
        stop_video = None
        if self.stop is not None:
            both = self.tempme is not None and feats.stop_cls is not None
            stop_video = self.pool_frames(feats.stop_cls, mask) if both else final
        return {
            "text": self.encode_text(input_ids, attention_mask),
            "video": final,
            "tempme_video": final if self.tempme is not None else None,
            "stop_video": stop_video,
            "logit_scale": self.logit_scale,
        }

    def compute_training_loss(
        self,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"tempme_loss", "stop_loss", "total_loss"}`` of a batch of matching (video, text)
        pairs: ``self.loss(self(...))`` (symmetric InfoNCE, gathered across ranks; weights
        ``training.tempme_loss_weight`` / ``stop_loss_weight``). ``token_type_ids`` is
        accepted for the user's guide's signature and unused (CLIP has none). The trainer
        trains whatever this returns as ``total_loss``, so a subclass may add terms."""
        del token_type_ids
        return self.loss(self(video, video_mask, input_ids, attention_mask))

    # ---- parameter groups ----------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter in exactly one group: ``tempme``, ``stop`` or ``backbone`` (CLIP,
        ``logit_scale`` included). Frozen parameters are listed too (``requires_grad`` False)."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            groups[_group_of(name)].append(p)
        return groups

    def named_param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Like :meth:`param_groups` with names."""
        groups: dict[str, list] = {g: [] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            groups[_group_of(name)].append((name, p))
        return groups

    def set_training_mode(self, mode: str, freeze_text: bool = False) -> None:
        """Train the module groups of ``mode`` (:data:`~tempstop.config.MODE_GROUPS`: joint both,
        tempme_only TempMe, stop_only STOP) and freeze the other. The backbone trains in every
        mode unless ``freeze_backbone``; its text tower not with ``freeze_text``
        (``demo_recipe.freeze_text``: its LoRA and STOP's text prompts still train)."""
        if mode not in MODE_GROUPS:
            raise ValueError(f"training mode must be one of {', '.join(MODE_GROUPS)}, got {mode!r}")
        trains = {group: group in MODE_GROUPS[mode] for group in ("tempme", "stop")}
        trains["backbone"] = not self.cfg.freeze_backbone
        for group, named in self.named_param_groups().items():
            for name, p in named:
                p.requires_grad_(trains[group] and not (freeze_text and is_text_backbone(name)))
        if not any(p.requires_grad for p in self.parameters()):
            log.warning("variant %s in mode %s has no trainable parameters", self.cfg.variant, mode)
        self.training_mode = mode


def _stop_layers(cfg: ModelConfig, tempme: TempMe | None, depth: int) -> int:
    """Number of STOP layers: blocks 1..n must come before the first ClipMe layer and the last block."""
    limit = min(first_clip_layer(tempme.schedule) if tempme is not None else depth, depth) - 1
    if cfg.stop.layers is None:
        n = max(0, min(4, limit))
        if n == 0:
            log.warning("no layer before the first ClipMe layer is left for STOP; STOP is off")
        return n
    if cfg.stop.layers > limit:
        raise ValueError(
            f"model.stop.layers={cfg.stop.layers}: STOP prompts the inputs of blocks 1..layers, "
            f"which must come before the first ClipMe layer and the last block (at most {max(limit, 0)})"
        )
    return cfg.stop.layers


def is_text_backbone(name: str) -> bool:
    """A parameter of CLIP's text tower: everything in CLIP but the vision tower and the
    temperature (``transformer``, ``token_embedding``, ``ln_final``, ``text_projection``, ...)."""
    return name.startswith("clip.") and not name.startswith(("clip.visual.", "clip.logit_"))


def _group_of(name: str) -> str:
    if name.startswith("tempme."):
        return "tempme"
    if name.startswith("stop."):
        return "stop"
    return "backbone"


def create_unified_model(
    cfg: ModelConfig | UnifiedModelConfig | str | Path,
) -> UnifiedTempMeSTOPModel:
    """Build the model from the ``model`` section (a full config or a config file also sets
    the loss weights from its ``training`` section)."""
    weights = {}
    if isinstance(cfg, (str, Path)):
        cfg = load_config(cfg)
    if isinstance(cfg, UnifiedModelConfig):
        weights = {
            "tempme_loss_weight": cfg.training.tempme_loss_weight,
            "stop_loss_weight": cfg.training.stop_loss_weight,
        }
        cfg = cfg.model
    if not isinstance(cfg, ModelConfig):
        raise TypeError(
            f"expected ModelConfig, UnifiedModelConfig or a config path, got {type(cfg).__name__}"
        )
    return UnifiedTempMeSTOPModel(cfg, **weights)
