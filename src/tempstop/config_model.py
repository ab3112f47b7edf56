"""The ``model`` section of the typed configuration: the backbone, TempMe and STOP.

Kept apart from :mod:`tempstop.config` (which assembles every section into
:class:`~tempstop.config.ProjectConfig` and re-exports these names) so that each file stays
readable; what each module computes is described in docs/design.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Model variants (``model.variant``): the unified model and its baselines, one list.
Variant = Literal["unified", "tempme", "stop", "meanP"]


class _Section(BaseModel):
    # Unknown keys are errors (typos must not be silently ignored), and types are strict: a
    # string is never taken for a number or a bool ("8", "yes" are refused). An int is a
    # valid float.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class TempMeConfig(_Section):
    """TempMe schedule (docs/design.md §2), computed as the official code does (the parity
    fixture in tests/fixtures/tempme states each rule with its file and line).

    Layers ``imgme_layers`` merge ``imgme_r`` pairs per frame after attention (ToMe). Each
    ClipMe layer ``clipme_layers[j]`` joins ``clipme_k[j]`` consecutive sequences, merges
    ``int(cross_merge * n)`` of the ``n`` joined tokens before attention (similarity on the
    residual stream) and ``int(intra_merge * n')`` after it (similarity on keys); later layers
    only do the latter. Every merge is also capped at half the non-CLS tokens.

    ``None`` means the paper's choice: layer lists follow its pattern for any depth (ClipMe on
    the ``len(clipme_k)`` layers before the last, ImgMe on all layers before those: 0-7 and
    8, 9, 10 for 12 layers); ``imgme_r``/``cross_merge``/``intra_merge`` take the preset of
    the backbone's patch size (:data:`TEMPME_PRESETS`: patch 16 -> ViT-B/16's, 127 output
    tokens for 12 frames; otherwise ViT-B/32's, 97 output tokens).
    """

    enabled: bool = True
    lora_rank: int = Field(8, ge=0)
    # The LoRA update is scaled by lora_alpha / lora_rank; the official code does not scale
    # (alpha = rank).
    lora_alpha: float = 8.0
    lora_text: bool = True
    imgme_layers: list[int] | None = None
    imgme_r: int | None = Field(None, ge=0)
    clipme_layers: list[int] | None = None
    clipme_k: list[int] = Field(default_factory=lambda: [2, 2, 3])
    cross_merge: float | None = Field(None, ge=0, lt=1)
    intra_merge: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_schedule(self) -> TempMeConfig:
        if self.clipme_layers is not None and len(self.clipme_layers) != len(self.clipme_k):
            raise ValueError(
                f"clipme_layers ({self.clipme_layers}) and clipme_k ({self.clipme_k}) "
                "must have the same length"
            )
        if any(k < 1 for k in self.clipme_k):
            raise ValueError(f"clipme_k values must be >= 1, got {self.clipme_k}")
        return self


#: The papers' TempMe schedules by patch size: ``(imgme_r, cross_merge, intra_merge)``.
#: Patch 32 (ViT-B/32, official main.py defaults: tome_r 2, merge_token_proportion 30-10):
#: 50 -> 34 tokens per frame, 97 output tokens for 12 frames. Patch 16 (ViT-B/16): the
#: schedule that gives the paper's 127 output tokens and ~121 GFLOPs (docs/efficiency.md).
TEMPME_PRESETS: dict[int, tuple[int, float, float]] = {32: (2, 0.3, 0.1), 16: (10, 0.4, 0.2)}


class StopConfig(_Section):
    """STOP prompting (docs/design.md §3).

    ``layers``: STOP prompts the inputs of blocks 1..layers (using the CLS attention of the
    block before); they must come before the first ClipMe layer. ``None`` (default): 4, or as
    many as fit before the first ClipMe layer.
    """

    enabled: bool = True
    layers: int | None = Field(None, ge=0)
    num_regions: int = Field(16, ge=1)
    score_alpha: float = Field(0.5, ge=0, le=1)
    hidden_dim: int = Field(16, ge=1)
    max_temporal_prompts: int = Field(4, ge=0)
    eta: float = Field(4.0, ge=0)
    beta: float = Field(1.0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    text_prompts: int = Field(0, ge=0)


class BackboneArchitecture(_Section):
    """An OpenAI-layout CLIP ViT described by its numbers (as read from a checkpoint's weights,
    e.g. by ``tempstop import-checkpoint``); heads are ``width // 64`` as in OpenAI's CLIP."""

    embed_dim: int = Field(ge=1)
    image_size: int = Field(ge=1)
    patch_size: int = Field(ge=1)
    vision_width: int = Field(ge=64)
    vision_layers: int = Field(ge=1)
    context_length: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    text_width: int = Field(ge=64)
    text_layers: int = Field(ge=1)


class ModelConfig(_Section):
    """Backbone plus the TempMe and STOP modules."""

    # An open_clip model name (ViT-B-32, ViT-B-16, the packaged tempstop-tiny); with
    # ``architecture`` set, only the name of that architecture.
    backbone: str = "tempstop-tiny"
    architecture: BackboneArchitecture | None = None
    # Frames per video: the model's input length (TempMe's max_frames; its clip positional
    # embeddings have one row per frame) and the number of frames extraction samples.
    frames: int = Field(12, ge=1)
    # An open_clip tag ("openai": needs internet) or a local checkpoint file (OpenAI .pt,
    # open_clip .bin/.pt/.safetensors); null: random init.
    pretrained: str | None = None
    freeze_backbone: bool = False
    # Frame size the vision tower takes (null: the backbone's own, 224 for ViT-B, 64 for tiny);
    # pretrained position embeddings are interpolated to it.
    image_size: int | None = Field(None, ge=16)
    # QuickGELU activations (OpenAI's CLIP weights need them); null: true for the "openai" tag
    # and OpenAI TorchScript files, false otherwise.
    quick_gelu: bool | None = None
    variant: Variant = "unified"
    max_words: int = Field(32, ge=4)
    tempme: TempMeConfig = Field(default_factory=TempMeConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
