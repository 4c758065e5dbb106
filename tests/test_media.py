"""Media decoding on the real clips in ../shared and on tiny files written here with PyAV:
stream choice, frame timing, backend agreement, exact audio spans, and clear errors."""
from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from vod2chat.ingest.media import MediaError, decord_can_read, probe, read_audio, read_frames

# file -> (duration s, (video idx, width, height, fps), (audio idx, rate), audio is digital silence)
REAL = {
    "nasa_13013.mp4": (13.056, (3, 480, 270, 30000 / 1001), (4, 16000), False),
    "in1.mp4": (7.036, (0, 320, 240, 30000 / 1001), (1, 44100), True),  # its AAC track is all zeros
    "big_buck_bunny_0_30.webm": (30.003, (0, 1280, 720, 24.0), (1, 44100), False),
    "chaplin.mp4": (9.64, (0, 640, 360, 25.0), (1, 44100), False),
}
GREY_STEP = 7  # frame i of the videos written here is uniform grey 10 + 7 * i


@pytest.fixture(scope="module")
def real(real_data: Path) -> dict[str, Path]:
    return {name: real_data / "video" / name for name in REAL}


def write_video(path: Path, fmt: str, frames: int = 30, fps: int = 10, size=(64, 48),
                audio_rate: int | None = 22050) -> Path:
    """H.264 (+ a 440 Hz AAC tone): frame i is uniform grey 10 + 7 * i, so a pixel names its frame."""
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "10"})
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        aus = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        n_audio, a = round(frames / fps * (audio_rate or 0)), 0
        for i in range(frames):
            img = np.full((size[1], size[0], 3), 10 + GREY_STEP * i, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(f))
            while aus is not None and a < min(n_audio, round((i + 1) / fps * audio_rate)):
                n = min(1024, n_audio - a)
                x = (0.3 * np.sin(2 * np.pi * 440 * (a + np.arange(n)) / audio_rate)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = audio_rate, a, Fraction(1, audio_rate)
                out.mux(aus.encode(af))
                a += n
        out.mux(vs.encode(None))
        if aus is not None:
            out.mux(aus.encode(None))
    return path


def frame_ids(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 10) / GREY_STEP) for f in frames]


# -- probe -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REAL)
def test_probe_real_videos(real, name):
    duration, (v, w, h, fps), (a, rate), _ = REAL[name]
    info = probe(real[name])
    assert info.path == str(real[name])
    assert info.duration == pytest.approx(duration, abs=0.01)
    assert (info.video_stream, info.width, info.height) == (v, w, h)
    assert info.fps == pytest.approx(fps, rel=1e-6)
    assert (info.audio_stream, info.audio_rate) == (a, rate)


def test_nasa_streams_are_listed_and_chosen_explicitly(real):
    info = probe(real["nasa_13013.mp4"])
    assert [(d["type"], d["codec"]) for d in info.streams] == [
        ("video", "h264"), ("audio", "aac"), ("subtitle", "mov_text"),
        ("video", "h264"), ("audio", "aac"), ("subtitle", "mov_text")]
    small = probe(real["nasa_13013.mp4"], video_stream=0, audio_stream=1)
    assert (small.video_stream, small.width, small.height, small.fps) == (0, 320, 180, 25.0)
    assert (small.audio_stream, small.audio_rate) == (1, 8000)
    assert (info.width, info.height) != (small.width, small.height)
    # Both pictures decode; decord cannot pick a stream, so auto reads these with PyAV.
    assert not decord_can_read(info) and not decord_can_read(small)
    assert read_frames(small, [5.0], size=(32, 32)).shape == read_frames(info, [5.0], size=(32, 32)).shape
    with pytest.raises(MediaError, match=r"nasa_13013\.mp4.*stream 1 is not a video stream"):
        probe(real["nasa_13013.mp4"], video_stream=1)


# -- frames ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REAL)
def test_frames_at_1fps_change_over_time(real, name):
    info = probe(real[name])
    times = np.arange(0, info.duration, 1.0)
    frames = read_frames(info, times)
    assert frames.shape == (len(times), 224, 224, 3) and frames.dtype == np.uint8
    moved = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames[:-1], frames[1:])]
    assert min(moved) > 0.3 and max(moved) > 10, moved  # every second moves, some a lot
    assert frames.std() > 10  # not a blank or constant picture


def test_size_is_width_by_height(real):
    info = probe(real["in1.mp4"])
    assert read_frames(info, [1.0, 2.0], size=(64, 32)).shape == (2, 32, 64, 3)


def test_decord_and_pyav_agree(real, caplog):
    info = probe(real["in1.mp4"])
    assert decord_can_read(info)
    times = np.arange(0, 7.0, 0.5)
    with caplog.at_level(logging.WARNING, logger="vod2chat.ingest.media"):
        d = read_frames(info, times, backend="decord")
    assert not caplog.records, "decord fell back to PyAV on a plain mp4"
    p = read_frames(info, times, backend="pyav")
    assert np.abs(d.astype(int) - p).mean() < 0.5  # same frames, same bilinear swscale


def test_decord_is_optional_auto_decodes_without_it(real):
    """decord is an extra (`vod2chat[decord]`): the default backend never imports it, and pyproject's
    required dependencies do not list it."""
    import subprocess
    import sys
    import tomllib

    code = ("import sys; from vod2chat.ingest.media import probe, read_frames; "
            f"f = read_frames(probe({str(real['in1.mp4'])!r}), [1.0, 2.0], size=(32, 16)); "
            "print(f.shape, 'decord' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["(2,", "16,", "32,", "3)", "False"], r.stdout + r.stderr
    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.split("[")[0].split("=")[0].strip() == "decord" for d in deps["dependencies"])
    assert deps["optional-dependencies"]["decord"] == ["decord"]


def test_frame_shown_at_t_is_the_last_with_pts_at_or_before_t(tmp_path):
    info = probe(write_video(tmp_path / "grey.mkv", "matroska", audio_rate=None))
    assert info.audio_stream is None
    times = [0.0, 0.05, 0.098, 0.1, 1.234, 2.9, 0.35, 0.0]  # unsorted on purpose
    for backend in ("pyav", "decord"):
        assert frame_ids(read_frames(info, times, size=(16, 16), backend=backend)) == [0, 0, 0, 1, 12, 29, 3, 0]


def test_times_past_the_end_are_clamped_up_to_a_second(tmp_path):
    info = probe(write_video(tmp_path / "grey.mkv", "matroska", audio_rate=None))
    assert info.duration == pytest.approx(3.0)
    assert frame_ids(read_frames(info, [2.95, 3.0, 3.9], size=(16, 16))) == [29, 29, 29]
    with pytest.raises(ValueError, match=r"grey\.mkv.*past the end"):
        read_frames(info, [4.5])
    with pytest.raises(ValueError, match=r">= 0"):
        read_frames(info, [-0.5])


@pytest.mark.parametrize("fmt,suffix", [("flv", ".flv"), ("matroska", ".mkv"), ("mp4", ".mp4")])
def test_containers_we_write_decode(tmp_path, fmt, suffix):
    info = probe(write_video(tmp_path / f"clip{suffix}", fmt))
    assert info.duration == pytest.approx(3.0, abs=0.1)
    assert (info.width, info.height, info.fps, info.audio_rate) == (64, 48, 10.0, 22050)
    times = [0.5, 1.5, 2.5]
    # flv shifts video by the AAC priming delay (its first frame is at 0.046 s), mkv and mp4 do not.
    expect = [math.floor((t - info.streams[info.video_stream]["start"]) * 10) for t in times]
    for backend in ("pyav", "decord"):
        assert frame_ids(read_frames(info, times, size=(16, 16), backend=backend)) == expect
    wave = read_audio(info, 1.0, 2.0)
    spectrum = np.abs(np.fft.rfft(wave))
    assert wave.shape == (16000,) and abs(int(spectrum.argmax()) - 440) <= 2  # 1 Hz bins


def test_decord_timeout_falls_back_to_pyav_and_names_the_file(tmp_path, caplog):
    info = probe(write_video(tmp_path / "slow.mp4", "mp4", audio_rate=None))
    with caplog.at_level(logging.WARNING, logger="vod2chat.ingest.media"):
        frames = read_frames(info, [0.0, 1.0, 2.0], size=(16, 16), backend="decord", timeout_s=0.0)
    assert frame_ids(frames) == [0, 10, 20]
    assert any("slow.mp4" in r.getMessage() and "decord" in r.getMessage() for r in caplog.records)
    assert not decord_can_read(info)  # once it hung on a file, decord is not tried on it again


# -- audio -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REAL)
def test_audio_lengths_are_exact(real, name):
    info = probe(real[name])
    silent = REAL[name][3]
    wave = read_audio(info, 0.0, info.duration)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == round(info.duration * 16000)
    assert np.abs(wave).max() <= 1.0
    if silent:
        assert not wave.any()
    else:
        assert np.sqrt(np.mean(wave ** 2)) > 0.01
    span = read_audio(info, 1.25, 2.5, sample_rate=8000)
    assert len(span) == 10000
    # Past the end: zeros to the exact length.
    tail = read_audio(info, info.duration - 0.5, info.duration + 0.5)
    assert len(tail) == 16000 and not tail[8500:].any()
    assert silent or tail[:7000].any()


@pytest.mark.parametrize("name", ["chaplin.mp4", "nasa_13013.mp4", "big_buck_bunny_0_30.webm"])
def test_seeking_into_the_middle_matches_reading_from_zero(real, name):
    info = probe(real[name])
    whole = read_audio(info, 0.0, 9.0)
    for start in (3.0, 5.37, 7.0):
        part = read_audio(info, start, start + 1.5)
        i0 = round(start * 16000)
        ref = whole[i0: i0 + len(part)]
        if name.endswith(".webm"):
            # webm stores millisecond timestamps: a read can start up to ~0.5 ms (8 samples) off.
            shifts = range(-8, 9)
            errs = [np.abs(part[20:-20] - whole[i0 + 20 + s: i0 + len(part) - 20 + s]).max() for s in shifts]
            assert min(errs) < 0.05
        else:  # mp3 44.1 kHz -> 16 kHz on the same sample grid; 16 kHz AAC needs no resampling
            assert np.abs(part - ref).max() < 1e-4


def test_video_without_audio_reads_zeros(tmp_path):
    info = probe(write_video(tmp_path / "mute.mkv", "matroska", audio_rate=None))
    assert info.audio_stream is None and info.audio_rate is None
    wave = read_audio(info, 0.5, 1.75)
    assert wave.shape == (20000,) and wave.dtype == np.float32 and not wave.any()


@pytest.mark.parametrize("rate,suffix", [(16000, ".wav"), (22050, ".flac")])
def test_separate_audio_file(tmp_path, real, rate, suffix):
    info = probe(real["in1.mp4"])
    path = tmp_path / f"voice{suffix}"
    t = np.arange(4 * rate) / rate
    sf.write(path, np.stack([0.5 * np.sin(2 * np.pi * 300 * t)] * 2, axis=1), rate)  # stereo
    wave = read_audio(info, 1.0, 2.5, audio_path=str(path))
    expect = 0.5 * np.sin(2 * np.pi * 300 * (1.0 + np.arange(24000) / 16000))
    assert wave.shape == (24000,)
    assert np.abs(wave[100:-100] - expect[100:-100]).max() < 0.01


# -- errors ------------------------------------------------------------------------------------
def test_non_media_files_raise_media_error_naming_the_file(tmp_path, real):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    with pytest.raises(MediaError, match="junk.mp4"):
        probe(junk)
    data = real["in1.mp4"].read_bytes()  # its moov atom is at the end: a cut copy has no index
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.mp4"):
        probe(cut)
    text = tmp_path / "chat.txt"
    text.write_text("[0:00:01] <a> hello\n" * 50)
    with pytest.raises(MediaError, match="chat.txt.*not a video"):
        probe(text)
    with pytest.raises(FileNotFoundError, match="missing.mkv"):
        probe(tmp_path / "missing.mkv")


def test_truncated_webm_raises_instead_of_repeating_the_last_frame(tmp_path, real):
    data = real["big_buck_bunny_0_30.webm"].read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    info = probe(cut)  # the header still says 30 s
    assert info.duration == pytest.approx(30.0, abs=0.01)
    assert read_frames(info, [1.0, 5.0], size=(32, 32)).shape == (2, 32, 32, 3)  # the part that is there
    for backend in ("pyav", "decord"):
        with pytest.raises(MediaError, match=r"cut\.webm.*truncated"):
            read_frames(info, [10.0, 25.0], size=(32, 32), backend=backend)
    with pytest.raises(MediaError, match=r"cut\.webm.*truncated"):
        read_audio(info, 20.0, 25.0)


def test_bad_arguments(real):
    info = probe(real["in1.mp4"])
    with pytest.raises(ValueError, match="backend"):
        read_frames(info, [1.0], backend="opencv")
    with pytest.raises(ValueError, match="span"):
        read_audio(info, 2.0, 1.0)
    assert read_frames(info, []).shape == (0, 224, 224, 3)
    assert read_audio(info, 1.0, 1.0).shape == (0,)


def test_keyframe_seeks_skip_frames_not_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """1 fps from a 10 fps stream with 2 s GOPs: jumping to the keyframe before each sampled time
    decodes far fewer frames and returns exactly the frames a full sequential decode shows."""
    from vod2chat.ingest import media
    from vod2chat.synth.scenes import synthesize

    video, _ = synthesize(tmp_path, seed=3, duration=20.0, fps=10, size=(160, 90))
    info = probe(video)
    decoded = {"n": 0}
    real_decoded = media._decoded

    def counting(*a, **kw):
        for f in real_decoded(*a, **kw):
            decoded["n"] += 1
            yield f

    monkeypatch.setattr(media, "_decoded", counting)
    times = np.arange(0.0, 20.0) + 0.05  # 0.05: just after a frame, like a sampling grid off the frame grid
    skipping = read_frames(info, times, size=(160, 90), backend="pyav", threads=1, seek_keyframes=True)
    n_skipping, decoded["n"] = decoded["n"], 0
    full = read_frames(info, times, size=(160, 90), backend="pyav", threads=1, seek_keyframes=False)
    assert np.array_equal(skipping, full)
    assert decoded["n"] >= 190 and n_skipping < 0.7 * decoded["n"]
    assert len({f.tobytes() for f in full}) > 10  # real, changing pictures


def test_cuda_decoding_falls_back_to_the_cpu_or_matches_it(tmp_path: Path):
    """hwaccel="cuda" decodes with NVDEC where there is one and gives the CPU decoder's frames
    (to rounding of the colour conversion); without a GPU it decodes on the CPU, same frames."""
    from vod2chat.synth.scenes import synthesize

    video, _ = synthesize(tmp_path, seed=4, duration=6.0, fps=10, size=(160, 90))
    info = probe(video)
    times = np.arange(0.0, 6.0, 0.5)
    cpu = read_frames(info, times, size=(160, 90), backend="pyav")
    hw = read_frames(info, times, size=(160, 90), backend="auto", hwaccel="cuda")
    assert hw.shape == cpu.shape and np.abs(hw.astype(int) - cpu.astype(int)).max() <= 3
