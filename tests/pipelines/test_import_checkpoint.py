"""`tempstop import-checkpoint --format tempme`: the official checkpoint of tests/fixtures/tempme
becomes a project checkpoint that reproduces the official outputs and that `tempstop.load_model`,
`tempstop evaluate`, `index` and `search` accept; bad files are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tempstop
from tempstop.data.store import array_relpath, save_array, write_index
from tempstop.data.transforms import frames_to_tensor
from tempstop_pipelines import cli

FIXTURE = Path(__file__).parents[1] / "fixtures" / "tempme"
OFFICIAL = FIXTURE / "official_model.pt"


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("import") / "tempme.pth"
    assert cli.main(["import-checkpoint", "--format", "tempme", str(OFFICIAL), "--out", str(out)]) == 0
    return out


def _embed(model, ref):
    video = frames_to_tensor(torch.from_numpy(np.load(FIXTURE / "frames.npy")))
    with torch.no_grad():
        ids, mask = model.tokenize(ref["sentences"])
        return model.encode_video(video, torch.ones(video.shape[:2])), model.encode_text(ids, mask)


def test_imported_checkpoint_reproduces_the_official_outputs(imported, ref):
    ckpt = torch.load(imported, map_location="cpu", weights_only=True)  # self-describing, weights only
    assert ckpt["format"] == "tempstop-checkpoint/1" and ckpt["config"]["model"]["variant"] == "tempme"
    assert ckpt["imported_from"]["format"] == "tempme" and len(ckpt["imported_from"]["sha256"]) == 64
    model = tempstop.load_model(imported)
    assert not model.training
    video, text = _embed(model, ref)
    torch.testing.assert_close(video, ref["video_embedding"], rtol=0, atol=2e-6)
    torch.testing.assert_close(text, ref["text_embedding"], rtol=0, atol=2e-6)


def test_float32_and_ddp_prefixed_official_files_import_the_same(tmp_path, imported, ref):
    state = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    path = tmp_path / "official_fp32_ddp.pth"
    torch.save({f"module.{k}": v.float() for k, v in state.items()}, path)
    out = tmp_path / "model.pth"
    assert cli.main(["import-checkpoint", "--format", "tempme", str(path), "--out", str(out)]) == 0
    a = torch.load(out, weights_only=True)["model"]
    b = torch.load(imported, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fail(capsys, path: Path, tmp_path: Path) -> str:
    out = tmp_path / "never.pth"
    assert cli.main(["import-checkpoint", "--format", "tempme", str(path), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_files_are_one_line_naming_the_file_and_key(tmp_path, capsys):
    state = torch.load(OFFICIAL, map_location="cpu", weights_only=True)

    clip_only = tmp_path / "clip_only.pt"  # plain CLIP weights, no TempMe parameters
    torch.save({k: v for k, v in state.items() if "TVPt_" not in k}, clip_only)
    assert "no TVPt_* parameters" in _fail(capsys, clip_only, tmp_path)

    missing = tmp_path / "missing_lora.pt"
    key = "clip.visual.transformer.resblocks.5.attn.TVPt_LoRA_b"
    torch.save({k: v for k, v in state.items() if k != key}, missing)
    assert f"missing {key}" in _fail(capsys, missing, tmp_path)

    no_backbone = tmp_path / "no_proj.pt"
    torch.save({k: v for k, v in state.items() if k != "clip.text_projection"}, no_backbone)
    assert "'text_projection'" in _fail(capsys, no_backbone, tmp_path)

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "not a PyTorch weights file" in _fail(capsys, text, tmp_path)

    assert "file not found" in _fail(capsys, tmp_path / "nope.pth", tmp_path)


class _Payload:
    """Unpickling this would create a marker file: the import must never run it."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    torch.save({"clip.visual.proj": payload}, evil)
    assert "refused: loading it would run pickled code" in _fail(capsys, evil, tmp_path)
    assert not (tmp_path / "pwned").exists()


def _store(root: Path, ref) -> Path:
    """A frame store of the fixture's two videos (224 px) captioned with sentences 0 and 1."""
    frames = np.load(FIXTURE / "frames.npy")
    items = []
    for i in range(2):
        key = f"video{i}"
        save_array(root / array_relpath(key), frames[i])
        items.append({"key": key, "video_id": key, "file": array_relpath(key), "captions": [ref["sentences"][i]],
                      "num_valid": 12, "segment": None})  # fmt: skip
    write_index(root, {"version": 1, "frames": 12, "size": 224, "source": "fixture", "datatype": "custom",
                       "items": items, "failed": []})  # fmt: skip
    return root


def test_evaluate_index_and_search_accept_the_imported_checkpoint(
    tmp_path, imported, ref, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = _store(tmp_path / "store", ref)
    report = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(imported), "--data", str(store), "--json", str(report), "--no-track",
            "--no-progress", "--set", "evaluate.gallery_queries=0"]  # fmt: skip
    assert cli.main(args) == 0
    result = json.loads(report.read_text())
    assert result["num_videos"] == 2 and result["t2v"]["R1"] in (0.0, 50.0, 100.0)
    index = tmp_path / "index"
    assert cli.main(["index", "--checkpoint", str(imported), "--data", str(store), "--out", str(index),
                     "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["search", "--index", str(index), "--json", "--top-k", "2", ref["sentences"][1]]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["hits"]
    # the official similarities rank the videos for this sentence; the search must agree
    order = ref["similarity"][1].argsort(descending=True).tolist()
    assert [h["video_id"] for h in hits] == [f"video{i}" for i in order]
    assert hits[0]["score"] == pytest.approx(
        ref["cosine_similarity"][1, order[0]].item(), abs=1e-4
    )  # printed to 4 decimals


def test_an_imported_tempme_checkpoint_starts_a_unified_training_run(tmp_path, imported, ref):
    """--init-from: TempMe's weights come from the official checkpoint, STOP starts fresh."""
    from tempstop.config import ProjectConfig
    from tempstop.training.trainer import UnifiedModelTrainer

    store = _store(tmp_path / "store", ref)
    official = torch.load(imported, map_location="cpu", weights_only=True)
    cfg = ProjectConfig.from_dict(official["config"]).with_overrides({
        "model.variant": "unified", "training.num_epochs": 1, "training.batch_size": 2,
        "training.eval_batch_size": 2, "training.train_data_path": str(store),
        "training.val_data_path": str(store), "training.checkpoint_dir": str(tmp_path / "ck"),
        "evaluate.gallery_queries": 0,
    })  # fmt: skip
    trainer = UnifiedModelTrainer(cfg, init_from=imported, progress=False)
    trainer._setup()
    weights = trainer.model.state_dict()
    assert any(k.startswith("stop.") for k in weights)
    for key, value in official["model"].items():
        assert torch.equal(weights[key], value), key
    summary = UnifiedModelTrainer(cfg, init_from=imported, progress=False).train()
    assert summary["epochs"] == 1 and (tmp_path / "ck" / "best_model.pth").is_file()
