"""`vod2chat train --address ... --num-workers 2`: Ray Train's TorchTrainer running the same
trainer on 2 gloo workers of a local 2-node Ray cluster (two raylets on loopback), writing the
same kind of run as torchrun --nproc_per_node 2."""

from __future__ import annotations

import pytest
import json
from pathlib import Path

from store_factory import make_store
from helpers import scalars

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_ray_train_on_two_nodes_writes_a_run_like_torchrun(two_node_cluster: str, tmp_path: Path):
    from vod2chat.launch.cli import main as cli

    store = tmp_path / "store"
    make_store(store)
    run = tmp_path / "run"
    rc = cli(["train", "--config", str(Path(__file__).resolve().parents[1] / "launch/debug.toml"),
              "--address", two_node_cluster, "--num-workers", "2", "--store", str(store),
              "--train.run-dir", str(run), "--train.steps", "6", "--train.save-every", "3", "--train.eval-every", "3",
              "--train.num-samples", "0", "--train.log-every", "1", "--no-train.progress", 'data.val_vods=["1003"]'])
    assert rc == 0
    meta = json.loads((run / "checkpoints/step_0000006/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["grad_accum"] == 1  # global 8 = 2 workers x micro 4
    assert meta["data"]["layout"]["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        ["step_0000003", "step_0000006"]
    assert {f"data_rank{r}.json" for r in (0, 1)} <= set(meta["files"])
    s = scalars(run)
    assert [st for st, _ in s["train/loss"]] == list(range(1, 7)) and [st for st, _ in s["val/loss"]] == [3, 6]
    assert (run / "config.toml").exists()
