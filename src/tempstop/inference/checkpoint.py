"""Checkpoint files: self-describing, atomic, loadable with ``torch.load(weights_only=True)``.

The layout (``"format": "tempstop-checkpoint/1"``, the config, the state dict, and in full
checkpoints the optimiser, schedule, RNG and sampler states and the history) is in
docs/design.md §7. Only tensors, numbers, strings, lists and dicts go in, so loading never
runs pickled code. This module owns the format: the trainer, ``tempstop train-phase`` and
``import-checkpoint`` write it, evaluation, indexing and serving read it (the trainer's RNG
states are converted to that vocabulary in :mod:`tempstop.training.rng`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from tempstop import model as model_module
from tempstop.config import ConfigError, ProjectConfig
from tempstop.utils import WriteError, atomic_write, first_line

FORMAT = "tempstop-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a TempMe-STOP checkpoint."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` added) atomically; returns the path.

    A failed write (a full disk: torch reports ``basic_ios::clear: iostream error`` or
    ``PytorchStreamWriter failed writing file``) raises :class:`CheckpointError` naming the
    file; the previous version of the file, if any, is left as it was. The same payload gives
    the same bytes (a DVC output must not change when nothing did).
    """
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    try:
        atomic_write(path, lambda tmp: _torch_save(payload, tmp))
    except WriteError as exc:
        raise CheckpointError(str(exc)) from None
    except RuntimeError as exc:  # torch's writer (ENOSPC, EFBIG) fails this way
        raise CheckpointError(f"{path}: cannot write ({first_line(exc)}); is the disk full?") from None
    return path


def _torch_save(payload: dict[str, Any], tmp: Path) -> None:
    # Through a file object, not the path: given a path, torch names the archive's records after
    # the file (here a random temporary name), so the same payload would differ in its bytes.
    with open(tmp, "wb") as f:
        torch.save(payload, f)


class UnreadableFileError(ValueError):
    """A file could not be read as a weights-only PyTorch file; the message is one line."""


def load_weights_only(path: str | Path, map_location: str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``path``: a pickle
    that would run code is refused (never loaded with ``weights_only=False``), a file that is
    no PyTorch file says so."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n|$)", text)
        reason = found.group(1).strip() if found else (text.strip().splitlines() or ["unreadable"])[0]
        if "Unsupported global" in reason:
            raise UnreadableFileError(
                f"{path}: refused: loading it would run pickled code ({reason}); only weights-only files are read"
            ) from None
        raise UnreadableFileError(f"{path}: not a PyTorch weights file ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"{path}: not a readable PyTorch file ({first_line(exc)})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise CheckpointError(f"{path}: cannot read checkpoint: {first_line(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a TempMe-STOP checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r}, "
            f"expected {FORMAT!r})"
        )
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r}")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], source: str = "checkpoint"):
    """The :class:`~tempstop.config.ProjectConfig` stored in a checkpoint; a config that does
    not validate is a :class:`CheckpointError` naming ``source`` and the key."""
    try:
        return ProjectConfig.from_dict(ckpt["config"], f"{source}: config")
    except ConfigError as exc:
        raise CheckpointError(str(exc).splitlines()[0]) from None


def load_model_weights(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, fresh: tuple[str, ...] = ()
) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not match.

    Parameters under the ``fresh`` prefixes (whole modules, e.g. ``"stop."``) may be missing
    from ``state_dict``: they keep their initialisation (a TempMe checkpoint starting a
    unified model)."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state_dict) if not k.startswith(fresh))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:

        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = []
        if missing:
            problems.append(f"missing {head(missing)}")
        if unexpected:
            problems.append(f"unexpected {head(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch {head(mismatched)}")
        raise CheckpointError(
            f"{source}: weights do not fit this model ({'; '.join(problems)}); was it trained with another model config?"
        )
    model.load_state_dict(state_dict, strict=not fresh)


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights: ``(model, cfg, ckpt)``.

    Every weight comes from the checkpoint's state dict: its ``model.pretrained`` is ignored
    (set to None in the returned ``cfg`` too), so a checkpoint can never make the loader open
    a file (a TorchScript backbone runs code when loaded) or download anything. The model is
    in eval mode on ``device``; ``ckpt`` is the checkpoint dict as loaded (on CPU), for its
    ``metrics``, ``epoch`` and so on.
    """
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, str(path))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})})
    try:
        # Through the module, so a test (or a user) that replaces the factory is obeyed here too.
        model = model_module.create_unified_model(cfg)
    except ValueError as exc:  # e.g. a backbone this open_clip does not know
        raise CheckpointError(f"{path}: cannot build its model: {first_line(exc)}") from None
    load_model_weights(model, ckpt["model"], str(path))
    model.to(device).eval()
    return model, cfg, ckpt
