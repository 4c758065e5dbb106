"""A local multi-node rehearsal: a Ray head and a worker node as separate raylet processes on
loopback, ingesting several VODs through `--address`, with work landing on both nodes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shards.store import Store
from test_ingest import debug_cfg


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


def test_ingest_spreads_over_two_nodes(two_node_cluster: str, tmp_path: Path):
    from ingest.driver import main
    from ingest.synth import synthesize

    vods = tmp_path / "vods"
    for i in range(4):
        synthesize(vods, seed=10 + i, duration=20.0, vod_id=f"70{i}")
    cfg = debug_cfg(tmp_path / "store", inputs=[str(vods)], address=two_node_cluster, num_actors=2,
                    cpus_per_actor=1.0, segments_per_shard=1)
    summary = main(cfg)
    assert sorted(summary.done) == [f"test/70{i}" for i in range(4)] and not summary.failed
    assert len(summary.nodes) == 2, f"all work ran on {summary.nodes}"
    assert Store(cfg.store).verify().ok
