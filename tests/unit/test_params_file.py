"""The shipped params.yaml survives what `dvc exp run -S key=value` does to it.

DVC applies `-S` by loading the file with ruamel, changing the values and writing it back; it
rewraps long lines and drops quotes. This runs that same function (``apply_overrides``) on a
copy, with values a user sets (a mode, a tracking server URL, a path), and checks that DVC can
still read the result (its YAML 1.2 reader is stricter than ours: an unquoted URI inside {...}
breaks it) and that it validates to the same config plus the changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tempstop.config import load_config

ROOT = Path(__file__).resolve().parents[2]

OVERRIDES = {
    "training.mode": "sequential",
    "training.num_epochs": 3,
    "tracking.uri": "http://127.0.0.1:5000",
    "data.root": "/data/msrvtt",
}


def test_dvc_set_param_keeps_params_yaml_valid(tmp_path):
    hydra = pytest.importorskip("dvc.utils.hydra")  # dvc is in the `pipeline` extra
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = load_config(params).model_dump()

    serialize = pytest.importorskip("dvc.utils.serialize")
    hydra.apply_overrides(str(params), [f"{key}={value}" for key, value in OVERRIDES.items()])

    dvc_view = serialize.load_yaml(str(params))  # what `dvc repro` reads: raises if the rewrite broke it
    after = load_config(params).model_dump()
    for key, value in OVERRIDES.items():
        section, name = key.split(".")
        assert dvc_view[section][name] == after[section][name] == value, key
        after[section][name] = before[section][name]
    assert after == before  # nothing else moved
