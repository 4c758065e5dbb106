"""The GPU ingest path (skipped without CUDA): NVDEC decoding, pinned copies, bf16 autocast.
Its features are the CPU fp32 features up to bf16 rounding, under their own fingerprint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ingest_config
from vod2chat.ingest.features import ingest_encoders
from vod2chat.ingest.worker import VodJob, ingest_vod
from vod2chat.shards.reader import read_store
from vod2chat.shards.store import Store

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_cuda_ingest_is_cpu_fp32_up_to_bf16(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from vod2chat.synth.scenes import synthesize

    video, chat = synthesize(tmp_path / "vods", seed=5, duration=30.0, fps=30, size=(640, 360))
    feats = {}
    for device, precision in (("cuda", "auto"), ("cpu", "fp32")):
        cfg = ingest_config(store=str(tmp_path / device), streamer="gpu", segment_s=10.0, lookback_s=5.0,
                           video_weights="random", audio_weights="random", device=device, precision=precision,
                           progress=False)
        enc = ingest_encoders(cfg)
        with caplog.at_level(logging.WARNING):
            out = ingest_vod(VodJob("gpu", "1", str(video), str(chat)), Store(cfg.store), enc, cfg)
        assert out.status == "done"
        feats[device] = {s.key: s for s in read_store(Store(cfg.store))}
        if device == "cuda":
            assert enc.video.precision == "bf16" and out.record.fingerprints["video"]["precision"] == "bf16 autocast"
            assert "decoding is unavailable" not in caplog.text  # NVDEC did the decoding
    assert feats["cuda"].keys() == feats["cpu"].keys()
    for k, s in feats["cpu"].items():
        a, b = s.video.astype(np.float32), feats["cuda"][k].video.astype(np.float32)
        assert a.shape == b.shape and np.abs(a - b).max() <= 0.1 * np.abs(a).max()
