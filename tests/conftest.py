"""Shared fixtures: the real test data lives beside the repo in ../shared, never inside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import ingest_folder

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real test data not found at {REAL_DATA} (expected ../shared beside the repo)")
    return REAL_DATA


@pytest.fixture
def one_thread():
    """Tiny matrices: threads only add overhead (and stall badly on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SYNTH_VODS = [f"3000{i}" for i in range(5)]


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory) -> Path:
    """Five 90 s synthetic streams (`vod2chat synth`) ingested with random-initialised encoders."""
    from vod2chat.synth.scenes import synthesize

    d = tmp_path_factory.mktemp("synth")
    for i, vod in enumerate(SYNTH_VODS):
        synthesize(d / "vods", seed=20 + i, duration=90.0, vod_id=vod)
    return ingest_folder(d, "synth")


@pytest.fixture(scope="session")
def synth_run(synth_store: Path, tmp_path_factory) -> dict:
    """The demo's model trained for a couple of CPU minutes on `synth_store` (the last VOD held out):
    {"run": run directory, "out": the trainer's final metrics}. Shared by the tests that need a
    model that listens to the stream (learning, live)."""
    from vod2chat.config import load_config
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main

    run = tmp_path_factory.mktemp("synth_run") / "run"
    cfg = load_config(Config, REPO / "launch/demo_train.toml", [
        f"data.store={synth_store}", f"train.run_dir={run}", f'data.val_vods=["{SYNTH_VODS[-1]}"]',
        "data.test_vods=[]", "train.steps=400", "train.eval_every=400", "train.save_every=400",
        "train.progress=false", "train.num_samples=0"])
    return {"run": run, "out": main(cfg)}


@pytest.fixture(scope="session")
def random_encoder_run(tmp_path_factory) -> Path:
    """A tiny model (launch/debug.toml) trained 4 steps on a factory store whose fingerprints are
    those of random-initialised encoders: a checkpoint that generate and live accept with
    `--weights random`, for the tests of their plumbing (the model's chat is noise)."""
    from accelerate.state import AcceleratorState

    from store_factory import make_store
    from vod2chat.config import load_config
    from vod2chat.ingest.config import EncoderConfig
    from vod2chat.ingest.features import Encoders
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.main import main as train

    root = tmp_path_factory.mktemp("genrun")
    make_store(root / "store", vods=3, segments=4)
    fps = json.loads(json.dumps(Encoders(EncoderConfig(video_weights="random", audio_weights="random"),
                                         device="cpu").fingerprints()))
    for p in (root / "store/vods").rglob("*.json"):
        rec = json.loads(p.read_text())
        rec["fingerprints"] = fps
        p.write_text(json.dumps(rec))
    AcceleratorState._reset_state()
    cfg = load_config(Config, REPO / "launch/debug.toml", [f"data.store={root / 'store'}", f"train.run_dir={root / 'run'}",
                                      "train.progress=false", "train.steps=4", "train.num_samples=0",
                                      'data.val_vods=["1002"]'])
    train(cfg)
    return root / "run"


@pytest.fixture(scope="module")
def two_node_cluster():
    """A local 2-node Ray cluster (a head and a worker raylet on loopback, one CPU each, so work
    spread over two slots lands on both nodes): its address."""
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


@pytest.fixture
def browser(tmp_path: Path):
    """A headless Chromium with one page (tests/browser.py); the test skips when none is installed."""
    from browser import CHROMIUM, NO_CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


# A local Ray (loopback only) for a module's ingest tests, shut down after them.
@pytest.fixture(scope="module")
def local_ray():
    import ray

    from vod2chat.ingest.driver import init_ray

    init_ray(None)
    yield
    ray.shutdown()
