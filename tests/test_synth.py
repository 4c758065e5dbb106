"""The synthetic stream: it decodes, its chat parses back, a seed fixes it, the picture and the
sound follow the scene schedule, and chat reacts to each change 1 to 4 s later."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from vod2chat.ingest.chat import parse_chat
from vod2chat.ingest.media import probe, read_audio, read_frames
from vod2chat.synth.scenes import (
    CHATTER,
    COLOUR_REACTIONS,
    COLOURS,
    REACTION_DELAY_S,
    SOUND_REACTIONS,
    SOUNDS,
    plan_stream,
    synthesize,
)

SEED, DURATION = 3, 30.0


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Path]:
    return synthesize(tmp_path_factory.mktemp("a"), seed=SEED, duration=DURATION, vod_id="777")


def test_writes_an_h264_aac_mkv_that_probes(synth):
    video, chat = synth
    assert (video.name, chat.name) == ("777.mkv", "777.irc")
    info = probe(video)
    assert info.duration == pytest.approx(DURATION, abs=1e-6)  # ingest counts segments from it
    assert [d["duration"] for d in info.streams] == pytest.approx([DURATION, DURATION], abs=1e-6)
    assert [(d["type"], d["codec"]) for d in info.streams] == [("video", "h264"), ("audio", "aac")]
    assert (info.width, info.height, info.fps, info.audio_rate) == (160, 90, 10.0, 16000)
    assert sorted(p.name for p in video.parent.iterdir()) == ["777.irc", "777.mkv"]  # nothing else


def test_ingest_pairs_the_video_with_its_chat(synth):
    from helpers import pair_inputs

    video, chat = synth
    [job] = pair_inputs([str(video.parent)], "synth")
    assert (job.vod_id, job.video, job.chat) == ("777", str(video), str(chat))


def test_chat_parses_back_to_the_plan(synth):
    log = parse_chat(synth[1])
    plan = plan_stream(SEED, DURATION)
    assert log.format == "tcd-irc" and not log.skipped
    assert log.messages == plan.messages
    assert all(0 <= m.t < DURATION for m in log.messages)
    # Steady background chatter plus reactions: both make up a real share of the chat.
    chatter = sum(m.text in CHATTER for m in log.messages)
    assert 0.3 * DURATION < chatter < 1.5 * DURATION
    assert len(log.messages) - chatter > chatter / 2


def test_same_seed_same_stream_other_seed_other_stream(synth, tmp_path):
    video, chat = synth
    video2, chat2 = synthesize(tmp_path / "again", seed=SEED, duration=DURATION, vod_id="777")
    assert chat2.read_bytes() == chat.read_bytes()
    a, b = probe(video), probe(video2)
    times = np.arange(0, DURATION, 0.1)
    assert np.array_equal(read_frames(a, times, size=(160, 90), backend="pyav"),
                          read_frames(b, times, size=(160, 90), backend="pyav"))
    assert np.array_equal(read_audio(a, 0, DURATION), read_audio(b, 0, DURATION))
    assert video2.read_bytes() == video.read_bytes()  # bitexact muxing: even the bytes match
    _, other = synthesize(tmp_path / "other", seed=SEED + 1, duration=DURATION, vod_id="777")
    assert other.read_bytes() != chat.read_bytes()


def test_picture_and_sound_follow_the_schedule(synth):
    info = probe(synth[0])
    scenes = plan_stream(SEED, DURATION).scenes
    assert len(scenes) >= 4 and scenes[0].start == 0 and scenes[-1].end == DURATION
    mids = [(s.start + s.end) / 2 for s in scenes]
    frames = read_frames(info, mids, size=(160, 90))
    for s, f in zip(scenes, frames):
        background = np.median(f.reshape(-1, 3), axis=0)  # the square covers < 1/16 of the frame
        assert np.abs(background - COLOURS[s.colour]).max() < 25, (s, background)
    for s in scenes:
        t0, t1 = s.start + 0.5, min(s.start + 1.5, s.end)  # clear of the change itself
        wave = read_audio(info, t0, t1)
        if SOUNDS[s.sound] is None:
            assert np.abs(wave).max() < 0.01, s
        else:
            peak = np.fft.rfftfreq(len(wave), 1 / 16000)[np.abs(np.fft.rfft(wave)).argmax()]
            assert abs(peak - SOUNDS[s.sound]) <= 3 / (t1 - t0), (s, peak)


def test_reactions_lag_the_scene_changes_they_name():
    plan = plan_stream(SEED, DURATION)
    lo, hi = REACTION_DELAY_S
    reacted = set()
    for m in plan.messages:
        for table, attr in ((COLOUR_REACTIONS, "colour"), (SOUND_REACTIONS, "sound")):
            labels = [k for k, texts in table.items() if m.text in texts]
            if not labels:
                continue
            causes = [s for s in plan.scenes
                      if getattr(s, attr) == labels[0] and lo - 1e-3 <= m.t - s.start <= hi + 1e-3]
            assert causes, f"{m} names {attr} {labels[0]} but no such change happened 1-4 s before"
            reacted.add((causes[0].start, attr))
    # Every change that leaves a full reaction window inside the stream gets reactions.
    for s in plan.scenes:
        if s.start + hi < DURATION:
            assert (s.start, "colour") in reacted and (s.start, "sound") in reacted, s


def test_two_minutes_write_in_seconds(tmp_path):
    t0 = time.perf_counter()
    video, chat = synthesize(tmp_path, seed=0)
    assert time.perf_counter() - t0 < 20  # ~2 s here; generous for a loaded CI machine
    assert probe(video).duration == pytest.approx(120.0, abs=1e-6)
    assert len(parse_chat(chat).messages) > 120
