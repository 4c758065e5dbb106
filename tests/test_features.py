"""Feature computation for a time range exists once (ingest.features): generate's rows for a range
are the rows ingest stored for the same stretch, on the same time grids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from vod2chat.ingest.chat import Message, write_irc
from helpers import ingest_config
from vod2chat.ingest.features import embed_range, ingest_encoders
from vod2chat.ingest.media import probe
from helpers import pair_inputs
from vod2chat.ingest.worker import ingest_vod
from vod2chat.shards.reader import read_store
from vod2chat.shards.store import Store


def test_embed_range_gives_the_rows_ingest_stored(real_data: Path, tmp_path: Path, one_thread):
    vods = tmp_path / "vods"
    vods.mkdir()
    shutil.copy(real_data / "video/in1.mp4", vods / "700.mp4")  # 7.0 s, H.264 + AAC
    write_irc([Message(1.0, "a", "hello"), Message(5.5, "b", "there")], vods / "700.irc")
    cfg = ingest_config(store=str(tmp_path / "store"), streamer="t", segment_s=3.0, lookback_s=2.0, fps=2.0,
                        segments_per_shard=8, video_weights="random", audio_weights="random", device="cpu",
                       progress=False)
    enc = ingest_encoders(cfg)
    [job] = pair_inputs([str(vods)], "t")
    assert ingest_vod(job, Store(cfg.store), enc, cfg).status == "done"
    stored = {s.segment_meta().segment: s for s in read_store(cfg.store)}
    assert len(stored) == 3
    media = probe(str(vods / "700.mp4"))
    for seg in (1, 2):  # segments with a full look-back before them
        s = stored[seg]
        m = s.segment_meta()
        got = embed_range(media, m.start, m.end, m.lookback, enc, cfg.decode, "t", "700", seg)
        gm = got.segment_meta()
        assert (gm.fps, gm.audio_hop, gm.audio_win) == (m.fps, m.audio_hop, m.audio_win)
        # Both on the global grids (video row k at k / fps, audio row j at j * hop): the rows they share
        # by grid index are the same features. (Ingest keeps the audio windows wholly inside its
        # look-back; a range also takes the one the window's start falls in.)
        for kind, g0, s0 in (("video", gm.video_t0 * gm.fps, m.video_t0 * m.fps),
                             ("audio", gm.audio_t0 / gm.audio_hop, m.audio_t0 / m.audio_hop)):
            assert abs(g0 - round(g0)) < 1e-6 and abs(s0 - round(s0)) < 1e-6  # on the grid
            a, b = getattr(got, kind), getattr(s, kind)
            lo, hi = max(round(g0), round(s0)), min(round(g0) + len(a), round(s0) + len(b))
            assert hi - lo >= len(b) - 1 > 0, (kind, lo, hi, len(b))  # nearly every stored row is in the range
            np.testing.assert_allclose(a[lo - round(g0): hi - round(g0)].astype(np.float32),
                                       b[lo - round(s0): hi - round(s0)].astype(np.float32), atol=2e-2)
    enc.decoder().shutdown()


def test_embed_range_reports_its_progress_chunk_by_chunk(real_data: Path, one_thread):
    """generate's progress bar is a plain callback: the rows of each chunk, as each is embedded."""
    from vod2chat.ingest.features import AUDIO_CHUNK_ROWS, VIDEO_CHUNK_ROWS

    cfg = ingest_config(store="unused", streamer="t", fps=10.0, video_weights="random", audio_weights="random",
                        device="cpu", progress=False)
    enc = ingest_encoders(cfg)
    calls: list[int] = []
    got = embed_range(probe(str(real_data / "video/in1.mp4")), 0.0, 7.0, 0.0, enc, cfg.decode, progress=calls.append)
    enc.decoder().shutdown()
    nv, na = len(got.video), len(got.audio)
    assert nv > VIDEO_CHUNK_ROWS and na > 0  # more than one video chunk
    chunks = lambda n, size: [min(size, n - i) for i in range(0, n, size)]  # noqa: E731
    assert calls == chunks(nv, VIDEO_CHUNK_ROWS) + chunks(na, AUDIO_CHUNK_ROWS), (calls, nv, na)
