"""`vod2chat demo --config launch/demo_debug.toml` (the quick variant): the whole chain (synth -> Ray ingest -> train -> eval -> generate) end
to end on a tiny stream, every output written. (`make demo` is the same code at full size.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vod2chat.launch.cli import main as cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_writes_every_output(tmp_path: Path, capsys):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    out = tmp_path / "demo"
    assert cli(["demo", "--config", str(REPO / "launch/demo_debug.toml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Recall@1" in printed and "replay page" in printed
    # Where the numbers come from: the CPU, bf16 native or not, and the precision computed in.
    import torch
    from vod2chat.ingest.precision import cpu_model, resolve_precision

    auto = resolve_precision("auto", torch.device("cpu"))  # a new store: the demo's ingest runs `auto`
    assert f"machine: CPU {cpu_model()}" in printed and "bf16 native: " in printed
    assert f"precision: encoders {auto}, training mixed_precision=" in printed
    report = json.loads((out / "run/eval-test.json").read_text())
    assert set(report["ablations"]) == {"full", "av_shuffled", "audio_only", "video_only", "chat_only"}
    chat = json.loads((out / "chat.json").read_text())
    assert chat and all({"t", "user", "text"} <= set(m) for m in chat)
    assert "[Events]" in (out / "chat.ass").read_text() and "<video" in (out / "replay.html").read_text()
    assert (out / "chat.irc").read_text().startswith("[")
    # Each stage's config beside its output, loadable again with --config.
    for saved in ("demo.toml", "run/config.toml", "run/eval-test.toml", "chat.toml"):
        assert (out / saved).is_file(), saved



def test_the_demo_settings_make_ingest_repeatable_at_each_precision(tmp_path: Path):
    """The demo's features are a function of the CPU kind and the precision: at a fixed precision
    (either, on any CPU) two ingests of a stream under the demo's settings write bit-identical
    shards, and the two precisions write different ones (so the demo says which it used)."""
    from vod2chat.config import load_config
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.synth.scenes import synthesize
    from helpers import pair_inputs
    from vod2chat.ingest.features import ingest_encoders
    from vod2chat.ingest.worker import ingest_vod
    from vod2chat.launch.demo import DemoConfig, reproducible
    from vod2chat.shards.store import Store

    synthesize(tmp_path / "vods", seed=3, duration=6.0, vod_id="100001")
    digests = {}
    for precision in ("fp32", "bf16"):  # bf16 is emulated (slowly) where not native: 6 s of stream
        for run in ("a", "b"):
            cfg = load_config(IngestConfig, REPO / "launch/ingest_debug.toml", [
                f"store={tmp_path / precision / run}", "streamer=synth", "progress=false", f"precision={precision}",
                "segment_s=3.0", "lookback_s=2.0", "segments_per_shard=2"])
            with reproducible(DemoConfig().threads):
                [job] = pair_inputs([str(tmp_path / "vods")], "synth")
                rec = ingest_vod(job, Store(cfg.store), ingest_encoders(cfg), cfg).record
            digests[precision, run] = [sh.sha256 for sh in rec.shards]
    assert digests["fp32", "a"] == digests["fp32", "b"] and digests["bf16", "a"] == digests["bf16", "b"]
    assert len(digests["fp32", "a"]) == 1 and digests["fp32", "a"] != digests["bf16", "a"]


def test_the_demo_settings_make_training_repeatable(tmp_path: Path):
    """What makes `make demo` print the same numbers on every run on a CPU kind at a precision: two
    trainings under its settings give bit-identical losses (its ingest and evaluation are seeded)."""
    from store_factory import make_store
    from vod2chat.config import load_config
    from vod2chat.launch.demo import DemoConfig, reproducible
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    make_store(tmp_path / "store", vods=3, segments=3)
    outs = []
    for run in ("a", "b"):
        with reproducible(DemoConfig().threads):
            outs.append(train(load_config(Config, REPO / "launch/demo_train.toml", [
                f"data.store={tmp_path / 'store'}", f"train.run_dir={tmp_path / run}", "train.steps=8",
                "train.progress=false", "train.eval_every=4", "train.num_samples=0", "data.val_vods=1002",
                "data.window_s=5"])))
    assert outs[0]["train/loss"] == outs[1]["train/loss"] and outs[0]["val/loss"] == outs[1]["val/loss"]
