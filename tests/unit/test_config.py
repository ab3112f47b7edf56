"""ProjectConfig (the guide's UnifiedModelConfig): defaults, params.yaml, the user's guide
format, strict types, earlier key names, errors, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tempstop.config import ConfigError, DemoConfig, UnifiedModelConfig, load_config

REPO = Path(__file__).resolve().parents[2]

#: Every key the user's guide (docs/training.md) shows, in its JSON format.
GUIDE = {
    "training": {
        "training_mode": "sequential",
        "tempme_lr": 2e-4,
        "stop_lr": 3e-5,
        "batch_size": 6,
        "num_epochs": 7,
        "datatype": "didemo",
        "checkpoint_dir": "./checkpoints/guide",
        "warmup_epochs": 1,
        "optimizer": "BertAdam",
        "weight_decay": 0.02,
        "gradient_accumulation_steps": 3,
        "max_grad_norm": 0.5,
        "scheduler": "linear",
        "tempme_loss_weight": 0.7,
        "stop_loss_weight": 0.3,
        "train_data_path": "./data/train",
        "val_data_path": "./data/val",
    }
}


def check_guide_values(cfg: UnifiedModelConfig) -> None:
    t = cfg.training
    for key, value in GUIDE["training"].items():
        if key == "training_mode":
            assert t.mode == t.training_mode == value
        elif key == "datatype":  # one key for the dataset type: data.datatype
            assert cfg.data.datatype == value and not hasattr(t, "datatype")
        else:
            assert getattr(t, key) == value, key


def test_defaults():
    cfg = UnifiedModelConfig()
    assert cfg.training.mode == "joint" and cfg.training.training_mode == "joint"
    assert cfg.demo == DemoConfig() and cfg.demo.train_quadruples == 600
    assert load_config(None) == cfg
    raw = cfg.to_dict()
    assert "validate" in raw and "validate_" not in raw  # params.yaml section name
    assert raw["training"]["mode"] == "joint"
    assert cfg.flat()["training.batch_size"] == cfg.training.batch_size


def test_repo_params_yaml_loads():
    path = REPO / "params.yaml"
    cfg = UnifiedModelConfig.from_yaml(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.data.root == raw["data"]["root"]
    assert cfg.training.batch_size == raw["training"]["batch_size"]
    assert cfg.model.tempme.clipme_k == raw["model"]["tempme"]["clipme_k"]
    assert cfg.validate_.timeout_s == raw["validate"]["timeout_s"]
    assert load_config(path) == cfg  # by extension


def test_guide_json_and_yaml_load(tmp_path):
    as_json = tmp_path / "training_config.json"
    as_json.write_text(json.dumps(GUIDE, indent=2))
    as_yaml = tmp_path / "training_config.yaml"
    as_yaml.write_text(yaml.safe_dump(GUIDE))
    from_json, from_yaml = UnifiedModelConfig.from_json(as_json), UnifiedModelConfig.from_yaml(as_yaml)
    check_guide_values(from_json)
    assert from_json == from_yaml
    assert from_json.model == UnifiedModelConfig().model  # other sections keep their defaults


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"training": {"batch_sizee": 8}}))
    with pytest.raises(ConfigError, match=r"unknown key 'training\.batch_sizee'") as err:
        UnifiedModelConfig.from_json(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key 'model\.tempme\.lora_rnk'"):
        UnifiedModelConfig.from_dict({"model": {"tempme": {"lora_rnk": 4}}})
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        UnifiedModelConfig.from_dict({"trainer": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"training\.batch_size: .*'eight'"):
        UnifiedModelConfig.from_dict({"training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"validate\.timeout_s"):
        UnifiedModelConfig.from_dict({"validate": {"timeout_s": -1}})
    with pytest.raises(ConfigError, match=r"model\.tempme: .*clipme_k"):
        UnifiedModelConfig.from_dict({"model": {"tempme": {"clipme_layers": [8, 9, 10], "clipme_k": [2, 2]}}})
    with pytest.raises(ConfigError, match=r"training\.mode: .*'both'"):
        UnifiedModelConfig.from_dict({"training": {"training_mode": "both"}})


def test_training_mode_alias():
    assert (
        UnifiedModelConfig.from_dict({"training": {"training_mode": "stop_only"}}).training.mode
        == "stop_only"
    )
    assert (
        UnifiedModelConfig.from_dict({"training": {"mode": "tempme_only"}}).training.training_mode
        == "tempme_only"
    )


def test_with_overrides():
    base = UnifiedModelConfig()
    cfg = base.with_overrides(
        {"training.batch_size": 4, "model.tempme.imgme_r": 1, "training.mode": "sequential"}
    )
    assert (cfg.training.batch_size, cfg.model.tempme.imgme_r, cfg.training.mode) == (4, 1, "sequential")
    assert base.training.batch_size == UnifiedModelConfig().training.batch_size  # a copy
    with pytest.raises(ConfigError, match=r"training\.batch_sizee"):
        base.with_overrides({"training.batch_sizee": 4})
    with pytest.raises(ConfigError, match=r"demo\.train_quadruples"):
        base.with_overrides({"demo.train_quadruples": 0})
    with pytest.raises(ConfigError, match=r"nope\.x"):
        base.with_overrides({"nope.x": 1})


def test_round_trip_and_file_errors(tmp_path):
    cfg = UnifiedModelConfig().with_overrides({"training.mode": "stop_only", "demo.seed": 5})
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert UnifiedModelConfig.from_json(path) == cfg
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        UnifiedModelConfig.from_json(bad)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        UnifiedModelConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(tmp_path / "cfg.toml")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "batch_size", "8"),  # a string is not an int
        ("demo_recipe", "freeze_text", "yes"),  # nor a bool
        ("training", "num_epochs", 2.0),  # a float is not an int
        ("evaluate", "dsl", 1),  # an int is not a bool
        ("data", "root", 5),  # nor a string
    ],
)
def test_types_are_strict_and_the_error_names_the_key(section, key, value):
    with pytest.raises(ConfigError, match=rf"<dict>: {section}\.{key}: .*\(got {value!r}\)"):
        UnifiedModelConfig.from_dict({section: {key: value}})


def test_yaml_reads_as_yaml_1_2(tmp_path):
    # 1e-4 is a number (PyYAML alone reads a string), "yes" is a string (PyYAML: a bool),
    # so the strict schema takes the first and refuses the second.
    path = tmp_path / "p.yaml"
    path.write_text("training: {tempme_lr: 1e-4, stop_lr: 2E-5}\ndemo_recipe: {freeze_text: true}\n")
    cfg = UnifiedModelConfig.from_yaml(path)
    assert (cfg.training.tempme_lr, cfg.training.stop_lr, cfg.demo_recipe.freeze_text) == (1e-4, 2e-5, True)
    path.write_text("demo_recipe: {freeze_text: yes}\n")
    with pytest.raises(ConfigError, match=r"demo_recipe\.freeze_text: .*'yes'"):
        UnifiedModelConfig.from_yaml(path)


def test_earlier_key_names_load_into_their_new_place():
    old = {
        "training": {"datatype": "vatex", "keep_quadruples": True, "hard_batches": 0.5,
                     "hard_batch_source": "words", "logit_scale_lr": 0.02, "frames_cache": "c"},
        "extract": {"frames": 6},
    }  # fmt: skip
    cfg = UnifiedModelConfig.from_dict(old, "old checkpoint")
    assert cfg.data.datatype == "vatex" and cfg.data.frames_cache == "c" and cfg.model.frames == 6
    r = cfg.demo_recipe
    assert (r.keep_quadruples, r.hard_batches, r.hard_batch_source, r.logit_scale_lr) == (
        True,
        0.5,
        "words",
        0.02,
    )
    assert old["training"]["datatype"] == "vatex"  # the input is not modified
    assert UnifiedModelConfig().with_overrides({"training.datatype": "msrvtt"}).data.datatype == "msrvtt"
    with pytest.raises(ConfigError, match=r"'training\.datatype' is the earlier name of 'data\.datatype'"):
        UnifiedModelConfig.from_dict({"training": {"datatype": "vatex"}, "data": {"datatype": "demo"}})


def test_params_yaml_states_the_defaults_except_the_demo_blocks():
    """One set of defaults: params.yaml repeats config.py's defaults (so that DVC tracks every
    key), except the tiny backbone's model block and the demo's own recipe."""
    params = UnifiedModelConfig.from_yaml(REPO / "params.yaml").flat()
    defaults = UnifiedModelConfig().flat()
    differ = {k for k in defaults if params[k] != defaults[k]}
    assert differ and all(k.startswith(("model.", "demo_recipe.")) for k in differ), sorted(differ)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw["demo_recipe"]) == set(UnifiedModelConfig().demo_recipe.model_fields)
    assert (
        UnifiedModelConfig().demo_recipe.hard_batches == 0
        and not UnifiedModelConfig().demo_recipe.keep_quadruples
    )


def test_data_paths_default_to_the_splits_of_the_data_root():
    cfg = UnifiedModelConfig().with_overrides({"data.root": "d", "data.train_split": "tr"})
    assert (cfg.train_data(), cfg.val_data()) == (str(Path("d/tr")), str(Path("d/val")))
    given = cfg.with_overrides({"training.train_data_path": "x/store"})
    assert given.train_data() == "x/store"


def test_the_index_section_is_checked_when_read():
    cfg = load_config()
    assert (cfg.index.shard_size, cfg.index.workers, cfg.index.vector_index) == (1000, 2, None)
    assert cfg.with_overrides({"index.vector_index": "ivf-sq8:nlist=64"}).index.vector_index == "ivf-sq8:nlist=64"
    with pytest.raises(ConfigError, match=r"index\.vector_index.*hnsw"):
        cfg.with_overrides({"index.vector_index": "hnsw"})
    with pytest.raises(ConfigError, match=r"index\.workers"):
        cfg.with_overrides({"index.workers": 0})
