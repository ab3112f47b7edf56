"""The shipped params.yaml survives what `dvc exp run -S key=value` does to it.

DVC applies `-S` by loading the file with ruamel, changing the values and writing the whole
file back in its own style (it rewraps long lines, drops quotes, writes lists in block style
and null as an empty value). This runs that same function (``apply_overrides``) on a copy, with
values a user sets (a mode, a tracking server URL, pretrained weights), and checks that DVC
can still read the result (its YAML 1.2 reader is stricter than ours: an unquoted URI inside
{...} breaks it), that it validates to the same config plus the changes, and that only the
changed keys' lines differ, so `git diff` after an experiment shows what the experiment changed.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from tempstop.config import load_config

ROOT = Path(__file__).resolve().parents[2]

OVERRIDES = {
    "training.mode": "sequential",
    "training.num_epochs": 3,
    "tracking.uri": "http://127.0.0.1:5000",
    "model.pretrained": "openai",
}


def test_dvc_set_param_keeps_params_yaml_valid_and_changes_only_its_lines(tmp_path):
    hydra = pytest.importorskip("dvc.utils.hydra")  # dvc is in the `pipeline` extra
    serialize = pytest.importorskip("dvc.utils.serialize")
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = load_config(params).model_dump()

    hydra.apply_overrides(str(params), [f"{key}={value}" for key, value in OVERRIDES.items()])

    dvc_view = serialize.load_yaml(str(params))  # what `dvc repro` reads: raises if the rewrite broke it
    after = load_config(params).model_dump()
    for key, value in OVERRIDES.items():
        section, name = key.split(".")
        assert dvc_view[section][name] == after[section][name] == value, key
        after[section][name] = before[section][name]
    assert after == before  # nothing else moved

    old = (ROOT / "params.yaml").read_text().splitlines()
    new = params.read_text().splitlines()
    diff = list(difflib.unified_diff(old, new, lineterm="", n=0))
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    assert len(added) == len(OVERRIDES), "\n".join(diff)
    for key, value in OVERRIDES.items():
        assert sum(line.lstrip().startswith(f"{key.split('.')[1]}: {value}") for line in added) == 1, key
