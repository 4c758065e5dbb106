"""cluster.yaml passes Ray's own cluster-config validation (the checks `ray up` runs)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_with_ray():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)
    assert cfg["head_node_type"] == "head"
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["max_workers"] >= 1 and gpu["node_config"]["InstanceType"].startswith("g")
    # Every node installs this project, and credentials never live in the file.
    assert any("pip install" in c and "vod2chat" in c for c in cfg["setup_commands"])
    text = (REPO / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "secret" not in text.replace("never from this file", "")
