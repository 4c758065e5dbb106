"""train.select=val_loss: a run directory stands for its checkpoint of the lowest validation loss,
kept through keep_last, carried exactly through a resume, and read from meta.json as a step
number only (a run directory is untrusted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import cfg_for, scalars
from store_factory import make_store
from vod2chat.trainer import checkpoint
from vod2chat.trainer.checkpoint import CheckpointError, load_run
from vod2chat.trainer.main import main

# A constant, high learning rate: the validation loss goes up and down, so the lowest is rarely the last.
SELECT = ("train.steps=40", "train.eval_every=4", "train.save_every=20", "train.select=val_loss", "train.lr=0.3",
          "train.min_lr_ratio=1.0", "train.num_samples=0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("select")
    store = d / "store"
    make_store(store)
    main(cfg_for(store, d / "pruned", *SELECT, "train.keep_last=1"))
    main(cfg_for(store, d / "all", *SELECT, "train.keep_last=0"))
    # The interrupted run: only what existed at step 20, then --resume to 40.
    (d / "part/checkpoints").mkdir(parents=True)
    shutil.copytree(d / "all/checkpoints/step_0000020", d / "part/checkpoints/step_0000020")
    shutil.copy(d / "all/tokenizer.json", d / "part/tokenizer.json")
    main(cfg_for(store, d / "part", *SELECT, "train.keep_last=0", "train.resume=true"))
    return {"store": store, "pruned": d / "pruned", "all": d / "all", "part": d / "part"}


def newest_meta(run: Path) -> dict:
    return checkpoint.read_meta(checkpoint.latest(run))


def test_the_run_stands_for_its_lowest_validation_loss_and_keeps_it(runs: dict[str, Path]):
    run = runs["pruned"]
    curve = dict(scalars(run)["val/loss"])
    assert sorted(curve) == list(range(4, 41, 4))
    low = min(curve, key=curve.get)
    best = newest_meta(run)["best"]
    assert best["step"] == low and best["val_loss"] == pytest.approx(curve[low], rel=1e-5)
    # keep_last=1 keeps the newest, and the selected one beside it.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted({f"step_{low:07d}", "step_0000040"})
    assert checkpoint.resolve(run) == run / f"checkpoints/step_{low:07d}"
    assert load_run(run)[3]["step"] == low
    # Every pass that improved saved a checkpoint, each recording the best up to it.
    improved = [s for s in sorted(curve) if curve[s] == min(v for t, v in curve.items() if t <= s)]
    have = {checkpoint.read_meta(c)["step"]: checkpoint.read_meta(c)["best"] for c in checkpoint.list_checkpoints(runs["all"])}
    assert set(improved) <= set(have) and all(have[s]["step"] == s for s in improved)


def test_a_resumed_run_selects_what_the_uninterrupted_run_selects(runs: dict[str, Path]):
    full, part = newest_meta(runs["all"])["best"], newest_meta(runs["part"])["best"]
    assert part["step"] == full["step"]
    assert part["val_loss"] == pytest.approx(full["val_loss"], abs=1e-5)
    assert newest_meta(runs["pruned"])["best"]["step"] == full["step"]


def test_select_last_is_the_newest_checkpoint(runs: dict[str, Path], tmp_path: Path):
    run = tmp_path / "last"
    main(cfg_for(runs["store"], run, *SELECT, "train.select=last", "train.keep_last=1"))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000040"]
    assert "best" not in newest_meta(run) and checkpoint.resolve(run) == run / "checkpoints/step_0000040"


@pytest.mark.parametrize("best, error", [
    ({"step": 7, "val_loss": 1.0}, r"selects step 7 .*step_0000007 is missing; pass a checkpoint directory"),
    ({"step": "../../../../etc", "val_loss": 1.0}, r"meta\.json: \"best\" must be .* a step number"),
    ({"step": True, "val_loss": 1.0}, r"\"best\" must be"),
    ([20], r"\"best\" must be"),
])
def test_a_planted_selection_is_refused_naming_the_file(runs: dict[str, Path], tmp_path: Path, best, error):
    run = tmp_path / "run"
    shutil.copytree(runs["all"], run)
    meta_path = checkpoint.latest(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["best"] = {"step": 20, "val_loss": 1.0}  # meta.json is not under its own sha256: a step that exists is taken
    meta_path.write_text(json.dumps(meta))
    assert checkpoint.resolve(run) == run / "checkpoints/step_0000020"
    meta["best"] = best
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=error):
        load_run(run)
    # The checkpoint named directly is still usable.
    assert load_run(checkpoint.latest(run))[3]["step"] == 40


def test_a_resume_refuses_a_best_without_a_finite_loss(runs: dict[str, Path], tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs["all"], run)
    meta_path = checkpoint.latest(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["best"] = {"step": 20, "val_loss": "NaN"}
    meta_path.write_text(json.dumps(meta))
    saved = (run / "config.toml").read_bytes()
    with pytest.raises(CheckpointError, match=r"meta\.json: \"best\" has no finite val_loss"):
        main(cfg_for(runs["store"], run, *SELECT, "train.steps=44", "train.resume=true"))
    assert (run / "config.toml").read_bytes() == saved  # nothing of the run is rewritten before the checks pass


def test_val_loss_selection_needs_validation_vods(runs: dict[str, Path], tmp_path: Path):
    with pytest.raises(ValueError, match=r"train\.select=val_loss .* no validation VOD"):
        main(cfg_for(runs["store"], tmp_path / "run", *SELECT, "data.val_vods=[]", "data.val_fraction=0"))
    assert not (tmp_path / "run/checkpoints").exists()
