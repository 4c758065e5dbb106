"""A local multi-node rehearsal: a Ray head and a worker node as separate raylet processes on
loopback, ingesting several VODs through `--address`, with work landing on both nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from vod2chat.shards.store import Store
from helpers import debug_cfg

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_ingest_spreads_over_two_nodes(two_node_cluster: str, tmp_path: Path):
    from vod2chat.ingest.driver import main
    from vod2chat.synth.scenes import synthesize

    vods = tmp_path / "vods"
    for i in range(4):
        synthesize(vods, seed=10 + i, duration=20.0, vod_id=f"70{i}")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)], address=two_node_cluster, num_actors=2,
                    cpus_per_actor=1.0, segments_per_shard=1)
    summary = main(cfg)
    assert sorted(summary.done) == [f"test/70{i}" for i in range(4)] and not summary.failed
    assert len(summary.nodes) == 2, f"all work ran on {summary.nodes}"
    assert Store(cfg.store).verify().ok


def test_device_cuda_asks_for_gpu_actors_before_any_gpu_node_is_up(two_node_cluster: str, tmp_path: Path):
    """On an autoscaling cluster the GPU workers exist only once actors ask for GPUs."""
    import ray

    from vod2chat.ingest.driver import _Pool, init_ray

    init_ray(two_node_cluster)
    with pytest.raises(ValueError, match="--num-actors"):
        _Pool(debug_cfg(tmp_path / "store", device="cuda"))
    pool = _Pool(debug_cfg(tmp_path / "store", device="cuda", num_actors=2))
    assert pool.opts["num_gpus"] == 1 and len(pool.actors) == 2  # pending until a GPU node joins
    for a in pool.actors:
        ray.kill(a)
    cpu_pool = _Pool(debug_cfg(tmp_path / "store", device="auto", num_actors=1))
    assert "num_gpus" not in cpu_pool.opts
    ray.kill(cpu_pool.actors[0])
