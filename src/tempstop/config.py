"""One typed configuration for TempMe-STOP.

`params.yaml` (DVC), the user's JSON training configs (``{"training": {...}}``) and the
CLI all load into :class:`ProjectConfig` (the user's guide calls it ``UnifiedModelConfig``).
Validation happens once, at the entry point, and is strict: an unknown key, or a value of the
wrong type (``"8"`` for an int, ``"yes"`` for a bool), raises :class:`ConfigError` naming the
key (``training.batch_size: ...``).

The defaults below are the only defaults: params.yaml states the same values, except for the
``demo_recipe`` section (the demo's own options, off by default) and the tiny backbone's
``model`` block. Earlier spellings of moved keys still load (:data:`LEGACY_KEYS`), so older
checkpoints and the guide's ``training.datatype`` keep working.

Sections are small models so that each component receives only its own part
(``create_unified_model(cfg.model)``, ``extract_split(..., cfg.extract, frames=cfg.model.frames)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from tempstop.config_files import (
    LegacyKeyError,
    format_errors,
    parse_yaml,
    read_text,
    upgrade_legacy_keys,
)
from tempstop.config_model import (
    TEMPME_PRESETS,
    BackboneArchitecture,
    ModelConfig,
    StopConfig,
    TempMeConfig,
    Variant,
    _Section,
)
from tempstop.utils import atomic_write_text, first_line
from tempstop.vector_index.spec import parse_index_spec

# The model section's classes live in tempstop.config_model; this module is the one place
# callers import any config class from.
__all__ = [
    "LEGACY_KEYS", "MODE_GROUPS", "MODEL_MODES", "PARAGRAPH_DATATYPES", "PARAM_GROUPS", "TEMPME_PRESETS", "TRAINING_MODES",
    "BackboneArchitecture", "ConfigError", "DataConfig", "DemoConfig", "DemoRecipeConfig", "EvaluateConfig",
    "ExtractConfig", "IndexConfig", "ModelConfig", "ProjectConfig", "StopConfig", "TempMeConfig",
    "TrackingConfig", "TrainingConfig", "UnifiedModelConfig", "ValidateConfig", "Variant", "load_config",
]  # fmt: skip

Datatype = Literal["msrvtt", "didemo", "activitynet", "vatex", "demo", "custom"]
TrainingMode = Literal["joint", "tempme_only", "stop_only", "sequential"]
#: Every training mode (the one list: config, model, trainer, CLI and flow use it).
TRAINING_MODES: tuple[str, ...] = get_args(TrainingMode)
#: Parameter groups, each with its own learning rate (``training.<group>_lr``).
PARAM_GROUPS: tuple[str, ...] = ("tempme", "stop", "backbone")
#: The modes a model trains in (``set_training_mode``) and the module groups each one trains
#: (the backbone trains in every mode unless frozen). ``sequential`` is not among them: it is
#: the trainer's ``tempme_only`` phase followed by a ``stop_only`` phase
#: (:func:`tempstop.training.state.plan_phases`).
MODE_GROUPS: dict[str, tuple[str, ...]] = {
    "joint": ("tempme", "stop"),
    "tempme_only": ("tempme",),
    "stop_only": ("stop",),
}
MODEL_MODES: tuple[str, ...] = tuple(MODE_GROUPS)

#: Datasets evaluated paragraph-to-video (captions of a video joined into one query).
PARAGRAPH_DATATYPES = frozenset({"didemo", "activitynet"})


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key."""


class DataConfig(_Section):
    """Where the dataset lives (native layout: ``<root>/<split>/{videos/,annotations.json}``)."""

    root: str = "data/demo"
    datatype: Datatype = "demo"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    # Where train, evaluate and index extract a raw split folder they are given (once; reused
    # while its annotations are unchanged).
    frames_cache: str = "data/frames_cache"


class DemoConfig(_Section):
    """The generated two-event moving-shapes benchmark (docs/design.md §6)."""

    seed: int = 0
    train_quadruples: int = Field(600, ge=1)
    val_quadruples: int = Field(75, ge=1)
    test_quadruples: int = Field(75, ge=1)
    train_captions: int = Field(3, ge=1)
    size: int = Field(96, ge=32)
    fps: int = Field(8, ge=1)
    seconds: float = Field(4.0, gt=0)
    workers: int = Field(2, ge=1)


class ValidateConfig(_Section):
    """Annotation and video checks (``tempstop validate``; the annotation checks also run
    before a raw split is extracted)."""

    timeout_s: float = Field(30.0, gt=0)
    workers: int = Field(2, ge=1)
    min_caption_words: int = Field(1, ge=0)
    max_caption_words: int = Field(200, ge=1)
    # Captions of one video: MSR-VTT has 20, ActivityNet up to ~30.
    max_captions: int = Field(1000, ge=1)
    min_fps: float = Field(1.0, gt=0)
    max_fps: float = Field(240.0, gt=0)
    min_side: int = Field(16, ge=1)
    max_side: int = Field(8192, ge=1)


class ExtractConfig(_Section):
    """Frame pre-extraction: ``model.frames`` uniformly sampled frames per video, resized to
    ``size`` and centre-cropped."""

    size: int = Field(64, ge=8)
    workers: int = Field(2, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    per_segment: bool = False
    # Videos per shard: one journal and one worker pool each, one task on a Ray cluster.
    shard_size: int = Field(1000, ge=1)


class TrainingConfig(_Section):
    """Trainer options; key names follow the user's guide (docs/training.md).

    The learning rates, batch size and epochs default to what trains the default backbone
    (``tempstop-tiny``, from scratch); runs from CLIP weights want smaller learning rates.
    """

    # params.yaml says `mode` (so `dvc exp run -S training.mode=joint` works); the user's
    # guide JSON says `training_mode`, which loads as `mode`.
    mode: TrainingMode = "joint"
    tempme_lr: float = Field(1e-3, ge=0)
    stop_lr: float = Field(1e-3, ge=0)
    backbone_lr: float = Field(1e-3, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_epochs: int = Field(16, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    optimizer: Literal["AdamW", "BertAdam"] = "AdamW"
    weight_decay: float = Field(0.01, ge=0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    tempme_loss_weight: float = Field(1.0, ge=0)
    stop_loss_weight: float = Field(1.0, ge=0)
    # Frame stores (``tempstop extract``) or, through ``tempstop train``, raw split folders;
    # null: ``<data.root>/<data.train_split>`` and ``<data.root>/<data.val_split>``.
    train_data_path: str | None = None
    val_data_path: str | None = None
    checkpoint_dir: str = "checkpoints/unified_model"
    save_every: int = Field(2, ge=1)
    sequential_split: float = Field(0.5, gt=0, lt=1)
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    seed: int = 42
    num_workers: int = Field(0, ge=0)
    max_bad_steps: int = Field(5, ge=1)

    @property
    def training_mode(self) -> str:
        """The guide's name for :attr:`mode`."""
        return self.mode


class DemoRecipeConfig(_Section):
    """The demo benchmark's own training options (docs/results.md, "What made the demo work"): what the
    tiny backbone, trained from scratch on the generated clips, needs to learn the shapes its
    captions name. All off by default; a run from CLIP weights needs none of them.
    """

    # Batches keep the demo's quadruples together (hard negatives that differ only in time);
    # needs the annotation field "quadruple".
    keep_quadruples: bool = False
    # Fraction of every batch filled with the groups most similar in caption to a random
    # anchor (hard negatives for fine distinctions, e.g. the demo's shapes); 0 = off.
    hard_batches: float = Field(0.0, ge=0, le=1)
    # What "similar in caption" means: "model" = cosine of the model's own text embeddings,
    # recomputed at every epoch start (captions the model finds alike); "words" = TF-IDF of
    # the caption words (fixed, free, but blind to which words matter).
    hard_batch_source: Literal["model", "words"] = "model"
    # Learning rate of CLIP's temperature (logit_scale); null: training.backbone_lr. From
    # scratch the temperature barely moves at backbone_lr within a short run.
    logit_scale_lr: float | None = Field(None, ge=0)
    # Freeze the CLIP text tower alone (its LoRA and STOP text prompts still train). Training
    # from scratch, a text tower that learns collapses every caption distinction the video
    # tower cannot see yet (the demo's shapes), and then the video tower is never asked for it;
    # a frozen random text tower keeps every word apart, so the video tower must learn each one.
    freeze_text: bool = False


class EvaluateConfig(_Section):
    """Evaluation options."""

    split: str = "test"
    batch_size: int = Field(64, ge=1)
    dsl: bool = False
    # Softmax temperature of dual-softmax re-ranking (applied to cosine similarities).
    dsl_temperature: float = Field(100.0, gt=0)
    # Text queries (spread over the split) whose top-5 videos go into the evaluation JSON and
    # metrics/plots/retrieval_gallery.png; 0 = no gallery.
    gallery_queries: int = Field(6, ge=0)


class IndexConfig(_Section):
    """Indexing a video collection for search: ``tempstop index`` and ``reindex``, the index and
    reindex flows and the pipeline's ``index`` stage. Frames per video and their size are the
    model's own (its checkpoint says)."""

    # Videos per shard: one embeddings file, one decode and one embed task on a Ray cluster.
    shard_size: int = Field(1000, ge=1)
    # Videos per model batch.
    batch_size: int = Field(32, ge=1)
    # Decoding processes, and the seconds one video may take to decode (a hung file is named
    # and skipped).
    workers: int = Field(2, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    # Vector index: flat, ivf-sq8 or ivf-flat, with parameters ("ivf-sq8:nlist=1024,nprobe=32");
    # null: exact below 50,000 videos, ivf-sq8 above (docs/search.md).
    vector_index: str | None = None
    # The keyframe strip of each video on the search page: frames and height in pixels.
    thumb_frames: int = Field(4, ge=1)
    thumb_height: int = Field(72, ge=8)
    # ``tempstop reindex``: index versions kept, the live one included (the rest is removed).
    keep_versions: int = Field(2, ge=1)

    @field_validator("vector_index")
    @classmethod
    def _known_vector_index(cls, value: str | None) -> str | None:
        # Checked when the params are read, not after an hour of embedding.
        if value is not None and value.strip().lower() not in ("", "auto"):
            parse_index_spec(value)
        return value


class TrackingConfig(_Section):
    """MLflow tracking; ``MLFLOW_TRACKING_URI`` overrides ``uri``."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "tempstop"
    registered_model: str = "tempstop-unified"
    enabled: bool = True
    # How long the end of a run waits for an unreachable tracking server to take the records
    # kept meanwhile (then it warns, naming what was not recorded).
    flush_timeout_s: float = Field(120.0, ge=0)

    def effective_uri(self) -> str:
        """``$MLFLOW_TRACKING_URI`` when set (the MLflow convention), else :attr:`uri`."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.uri


#: Keys that moved, old spelling -> new (checkpoints and configs written before still load).
LEGACY_KEYS: dict[str, str] = {
    "training.training_mode": "training.mode",  # the user's guide
    "training.datatype": "data.datatype",  # the user's guide
    "training.frames_cache": "data.frames_cache",
    "training.keep_quadruples": "demo_recipe.keep_quadruples",
    "training.hard_batches": "demo_recipe.hard_batches",
    "training.hard_batch_source": "demo_recipe.hard_batch_source",
    "training.logit_scale_lr": "demo_recipe.logit_scale_lr",
    "extract.frames": "model.frames",
    "model.freeze_text": "demo_recipe.freeze_text",
}


class ProjectConfig(_Section):
    """The whole configuration: every section of params.yaml."""

    data: DataConfig = Field(default_factory=DataConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    demo_recipe: DemoRecipeConfig = Field(default_factory=DemoRecipeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    model_config = ConfigDict(populate_by_name=True)

    # ---- loading -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> ProjectConfig:
        """Validate a nested dict; errors name the file and the dotted key."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
        try:
            return cls.model_validate(upgrade_legacy_keys(raw, LEGACY_KEYS))
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, source)) from None
        except LegacyKeyError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> ProjectConfig:
        """Load a JSON config (the user's guide format ``{"training": {...}}`` or full)."""
        path = Path(path)
        try:
            raw = json.loads(read_text(path, ConfigError))
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path}: not valid JSON: {first_line(exc)}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ProjectConfig:
        """Load a YAML config such as params.yaml."""
        path = Path(path)
        try:
            raw = parse_yaml(read_text(path, ConfigError))
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {first_line(exc)}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_file(cls, path: str | Path) -> ProjectConfig:
        """Load JSON or YAML by extension."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            return cls.from_json(path)
        if suffix in {".yaml", ".yml"}:
            return cls.from_yaml(path)
        raise ConfigError(f"{path}: unknown config format (use .json, .yaml or .yml)")

    # ---- editing and saving --------------------------------------------------------
    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides") -> ProjectConfig:
        """Return a copy with dotted-key overrides applied (``{"training.batch_size": 4}``)."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            dotted = LEGACY_KEYS.get(dotted, dotted)
            node = raw
            keys = dotted.split(".")
            for key in keys[:-1]:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"{source}: unknown key '{dotted}'")
                node = node[key]
            if keys[-1] not in node:
                raise ConfigError(f"{source}: unknown key '{dotted}'")
            node[keys[-1]] = value
        return ProjectConfig.from_dict(raw, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, with the section names of params.yaml."""
        return self.model_dump(by_alias=True, mode="json")

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON, atomically."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` view, e.g. for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = node

        walk("", self.to_dict())
        return out

    # ---- derived values ------------------------------------------------------------
    def train_data(self) -> str:
        """``training.train_data_path``, or the training split under ``data.root``."""
        return self.training.train_data_path or str(Path(self.data.root) / self.data.train_split)

    def val_data(self) -> str:
        """``training.val_data_path``, or the validation split under ``data.root``."""
        return self.training.val_data_path or str(Path(self.data.root) / self.data.val_split)


#: The user's guide's name for :class:`ProjectConfig`.
UnifiedModelConfig = ProjectConfig


def load_config(path: str | Path | None = None) -> ProjectConfig:
    """Load ``path`` (JSON or YAML); ``None`` gives the defaults."""
    if path is None:
        return ProjectConfig()
    return ProjectConfig.from_file(path)
