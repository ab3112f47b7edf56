"""Checkpoint files: self-describing, atomic, loadable with ``torch.load(weights_only=True)``.

Layout (docs/ARCHITECTURE.md)::

    {"format": "tempstop-checkpoint/1", "config": cfg.to_dict(), "model": state_dict,
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": ..., "sampler": ...,
     "epoch": int, "step": int, "phase": str, "best_metric": float, "metrics": {...}}

Only tensors, numbers, strings, lists and dicts go in, so loading never runs pickled code.
RNG states are converted to that vocabulary here (Python's and NumPy's are tuples of ints
and arrays).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tempstop.utils import WriteError, atomic_write

FORMAT = "tempstop-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a TempMe-STOP checkpoint."""


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as weights-only-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            # A different number of GPUs: the states cannot map one to one; seed-derived
            # states on the new devices are the honest fallback.
            return
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` added) atomically; returns the path.

    A failed write (a full disk: torch reports ``basic_ios::clear: iostream error`` or
    ``PytorchStreamWriter failed writing file``) raises :class:`CheckpointError` naming the
    file; the previous version of the file, if any, is left as it was.
    """
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except WriteError as exc:
        raise CheckpointError(str(exc)) from None
    except RuntimeError as exc:  # torch's writer (ENOSPC, EFBIG) fails this way
        raise CheckpointError(f"{path}: cannot write ({_first_line(exc)}); is the disk full?") from None
    return path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise CheckpointError(f"{path}: cannot read checkpoint: {_first_line(exc)}") from None
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
    from tempstop.config import ConfigError, ProjectConfig

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


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights: ``(model, cfg, ckpt)``.

    Every weight comes from the checkpoint's state dict: its ``model.pretrained`` is ignored
    (set to None in the returned ``cfg`` too), so a checkpoint can never make the loader open
    a file (a TorchScript backbone runs code when loaded) or download anything. The model is
    in eval mode on ``device``; ``ckpt`` is the checkpoint dict as loaded (on CPU), for its
    ``metrics``, ``epoch`` and so on.
    """
    from tempstop.model import create_unified_model

    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, str(path))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})})
    try:
        model = create_unified_model(cfg)
    except ValueError as exc:  # e.g. a backbone this open_clip does not know
        raise CheckpointError(f"{path}: cannot build its model: {_first_line(exc)}") from None
    load_model_weights(model, ckpt["model"], str(path))
    model.to(device).eval()
    return model, cfg, ckpt


def check_same_model(ckpt: dict[str, Any], cfg, source: str) -> None:
    """Resuming needs the same model config; name the keys that differ."""
    saved = checkpoint_config(ckpt, source).to_dict()["model"]
    current = cfg.to_dict()["model"]
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"model.{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:5])
        raise CheckpointError(
            f"{source}: trained with another model config ({details}); resume with the same config"
        )
