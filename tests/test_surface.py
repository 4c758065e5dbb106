"""What a new user meets: missing stores, relative paths, reused run dirs, early checks, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from store_factory import make_store
from vod2chat.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEBUG = REPO / "launch/debug.toml"


def cli(argv: list[str]) -> int:
    from vod2chat.launch.cli import main

    return main(argv)


@pytest.mark.parametrize("action", ["ls", "verify", "gc"])
def test_a_missing_store_is_an_error(tmp_path: Path, capsys, action: str):
    assert cli(["store", action, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no such store" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "notastore").mkdir()
    assert cli(["store", action, str(tmp_path / "notastore")]) == 2
    assert "not a vod2chat store" in capsys.readouterr().err
    make_store(tmp_path / "store", vods=1, segments=1)
    assert cli(["store", action, str(tmp_path / "store")]) == 0


def test_a_run_saves_its_store_absolute_and_is_not_overwritten(tmp_path: Path, monkeypatch, capsys):
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    make_store(tmp_path / "work/store", vods=2, segments=2)
    monkeypatch.chdir(tmp_path / "work")
    overrides = ["data.store=store", "train.run_dir=run", "train.progress=false", "train.steps=1",
                 "train.eval_batches=1", "train.num_samples=0", "data.val_vods=1001"]
    train(load_config(Config, DEBUG, overrides))
    saved = load_config(Config, tmp_path / "work/run/config.toml")
    assert saved.data.store == str(tmp_path / "work/store")  # eval/generate find it from anywhere
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work/run/checkpoints").rglob("*")}
    # The same run_dir again without --resume: refused, nothing touched.
    assert cli(["train", "--config", str(DEBUG), *overrides]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work/run/checkpoints").rglob("*")} == before
    # From another directory, eval's default store is the run's, found by its absolute path.
    monkeypatch.chdir(tmp_path)
    assert cli(["eval", "--config", str(REPO / "launch/eval_debug.toml"), "--run", "work/run", "--split", "val",
                "--num-diversity-samples", "0"]) == 0
    assert re.search(r"WARNING: only \d+ candidates .* R@[0-9,]*10 is 1.0 there by construction",
                     capsys.readouterr().out)  # eval_debug asks for 8 candidates: R@10 cannot miss
    assert (tmp_path / "work/run/eval-val.toml").is_file()


def test_training_on_a_missing_store_says_so(tmp_path: Path, capsys):
    assert cli(["train", "--config", str(DEBUG), "--store", str(tmp_path / "nope"),
                f"train.run_dir={tmp_path / 'run'}"]) == 2
    assert "no such store" in capsys.readouterr().err


def test_missing_weights_at_ingest_surface_alone(tmp_path: Path, monkeypatch, capsys):
    """The weights error, said once, before Ray starts: not buried under an actor-death traceback."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))  # no weights in this cache
    assert cli(["synth", "--config", str(REPO / "launch/synth_debug.toml"), "--out", str(tmp_path / "vods")]) == 0
    capsys.readouterr()
    assert cli(["ingest", "--store", str(tmp_path / "store"), "--streamer", "s", "--device", "cpu",
                str(tmp_path / "vods")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vod2chat ingest: error: ResNet-50 weights not found") and "--weights random" in err
    assert "ray" not in err.lower() and "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "store").exists()  # refused before any work


def test_ray_wrapped_errors_are_reduced_to_their_cause():
    from vod2chat.launch.args import one_line

    try:
        import ray.exceptions
    except ImportError:
        pytest.skip("ray")

    class Inner(ValueError):
        pass
    wrapped = ray.exceptions.RayTaskError("f", "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                          "vod2chat.ingest.chat.ChatError: x.irc:3: unparseable", Inner("x"))
    assert one_line(wrapped) == "x.irc:3: unparseable"


def test_a_training_start_lists_the_store_once(tmp_path: Path, monkeypatch):
    """Splits, feature statistics, tokenizer text, the pinned selection and the loaders all read one
    listing of the store (trainer.data.RunSplits, passed down), not one each."""
    from fsspec.implementations.local import LocalFileSystem

    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    make_store(tmp_path / "store", vods=3, segments=2)
    listings = []
    glob = LocalFileSystem.glob

    def counting_glob(self, path, *a, **kw):
        if str(path).endswith("vods/*/*.json"):
            listings.append(path)
        return glob(self, path, *a, **kw)
    monkeypatch.setattr(LocalFileSystem, "glob", counting_glob)
    train(load_config(Config, DEBUG, [f"data.store={tmp_path / 'store'}", f"train.run_dir={tmp_path / 'run'}",
                                      "train.progress=false", "train.steps=2", "train.eval_batches=1",
                                      "train.num_samples=0", "data.val_vods=1002"]))
    assert len(listings) == 1, listings
    # No process-wide state: a Store made during or after the run lists the store itself.
    from vod2chat.shards.store import Store
    assert not hasattr(Store, "_snapshots")
