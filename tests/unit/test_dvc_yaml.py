"""dvc.yaml tells the truth: each stage's deps cover the code it runs and its params are
exactly the keys it reads, both derived from the source (:mod:`code_graph`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from code_graph import ROOT, code_deps, module_file, param_reads, reachable, schema_sections

#: dvc.yaml stage -> the `tempstop` sub-command modules its commands run.
STAGE_MODULES = {
    "demo_data": ["demo_data"],
    "validate": ["validate"],
    "extract_frames": ["extract"],
    "train_tempme": ["train_phase"],
    "train_stop": ["train_phase"],
    "evaluate": ["evaluate", "plots"],
    "index": ["index"],
}
#: Packages a stage's deps name as one folder when the stage runs every module in them.
CODE_FOLDERS = tuple(f"src/tempstop/{p}" for p in ("collection", "data", "inference", "model", "training", "vector_index"))
#: Read by every stage that reads them, never params: where results are reported, where raw
#: splits are cached.
NEVER_PARAMS = {"tracking", "data.frames_cache"}
#: Keys read by library code a stage reaches that do not come from params.yaml there.
NOT_FROM_PARAMS = {
    # The training stages set these from their --frames and --out.
    "train_tempme": {"training.checkpoint_dir", "training.train_data_path", "training.val_data_path"},
    "train_stop": {"training.checkpoint_dir", "training.train_data_path", "training.val_data_path"},
    # evaluate and index build the model from the checkpoint's config; the annotation checks run
    # only for a raw split, and dvc.yaml hands them frame stores.
    "evaluate": {"model", "training.tempme_loss_weight", "training.stop_loss_weight", "validate"},
    "index": {"model", "training.tempme_loss_weight", "training.stop_loss_weight", "validate"},
}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _modules(stage: str) -> set[str]:
    start = ["tempstop_pipelines.cli", *(f"tempstop_pipelines.stages.{m}" for m in STAGE_MODULES[stage])]
    return set().union(*(reachable(m) for m in start))


def _keys(items) -> set[str]:
    """Dotted params with whole sections expanded to their keys."""
    sections = {name.rstrip("_"): keys for name, keys in schema_sections()}
    out = set()
    for item in items:
        out |= {f"{item}.{k}" for k in sections[item]} if item in sections else {item}
    return out


def test_every_stage_is_analysed():
    assert set(_stages()) == set(STAGE_MODULES)


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_deps_cover_the_code_the_stage_runs(stage):
    deps = [Path(d) for d in _stages()[stage]["deps"] if not d.startswith("${")]
    files = {module_file(m).relative_to(ROOT) for m in _modules(stage)}
    missing = sorted(str(f) for f in files if not any(f == d or f.is_relative_to(d) for d in deps))
    suggested = "\n      - ".join(code_deps(_modules(stage), CODE_FOLDERS))
    assert missing == [], f"{stage}: code it runs that dvc.yaml does not list; its code deps:\n      - {suggested}"
    for dep in deps:  # no stale entries: a code dep holds code the stage runs, or only data
        assert (ROOT / dep).exists(), f"{stage}: {dep} does not exist"
        py = [dep] if dep.suffix == ".py" else [p.relative_to(ROOT) for p in (ROOT / dep).rglob("*.py")]
        assert not py or any(p in files for p in py), f"{stage}: {dep} holds no code the stage runs"
    # Each listed file or folder holds only code the stage runs (an edit elsewhere must not
    # make DVC rerun it): folders only where the stage runs all of them.
    listed = [d for d in deps if (ROOT / d).suffix == ".py" or (ROOT / d).is_dir() and any((ROOT / d).rglob("*.py"))]
    assert sorted(str(d) for d in listed) == code_deps(_modules(stage), CODE_FOLDERS), stage


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_params_are_exactly_the_keys_the_stage_reads(stage):
    sections = schema_sections()
    reads = set().union(*(param_reads(m, sections) for m in _modules(stage)))
    expected = _keys(reads) - _keys(NEVER_PARAMS) - _keys(NOT_FROM_PARAMS.get(stage, set()))
    assert _keys(_stages()[stage].get("params", [])) == expected


def test_params_yaml_holds_every_listed_key():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"{name}: params.yaml has no {key}"
                node = node[part]


def test_the_analysis_sees_reads_and_would_catch_a_drift():
    sections = schema_sections()
    assert param_reads("tempstop_pipelines.stages.extract", sections) >= {
        "extract",
        "model.frames",
        "validate",
    }
    assert "training" in param_reads("tempstop.training.trainer", sections)
    # A stage that read one more key than dvc.yaml lists would fail the test above:
    reads = set().union(*(param_reads(m, sections) for m in _modules("extract_frames")))
    assert _keys(reads | {"evaluate.split"}) != _keys(_stages()["extract_frames"]["params"])
