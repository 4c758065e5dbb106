"""`vod2chat live` on streams written while it runs: a growing MPEG-TS file, an HLS playlist
served on loopback, MPEG-TS on stdin. Real encoding (libx264 + AAC through PyAV, paced by the
wall clock), the real CLI in a subprocess. Whether the chat follows the stream needs a model
that listens to it (conftest `synth_run`, trained for minutes); the plumbing (HLS, stdin, every
live failure: a stall, the end of the source, corrupt packets, Ctrl-C; Twitch IRC chat as
context from a small IRC server on loopback) runs on a tiny, barely trained checkpoint
(conftest `random_encoder_run`).
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import signal
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import RATE, finish, live_cmd, random_encoders, start, wait_ready, writer
from vod2chat.synth.scenes import COLOUR_REACTIONS, SOUND_REACTIONS, Stream, plan_stream, write_live

END_SLACK_S = 0.5  # in MPEG-TS the AAC encoder's priming and flush run the audio a little past the video


COLOUR_WORDS = {"red": ["red"], "green": ["green", "grass"], "blue": ["blue"], "yellow": ["yellow", "banana"],
                "purple": ["purple"], "white": ["white", "flashbang", "bright"]}
SOUND_WORDS = {"bass": ["bass", "subwoofer"], "beep": ["beep"], "high": ["high", "dog whistle", "ears"],
               "chirp": ["chirp"], "silence": ["quiet", "silence", "no sound", "muted", "audio died"]}
assert set(COLOUR_WORDS) == set(COLOUR_REACTIONS) and set(SOUND_WORDS) == set(SOUND_REACTIONS)


def reacts(stream: Stream, msgs: list[dict]) -> tuple[int, int]:
    """(messages naming the colour or sound on screen at their time, messages naming any). A
    message names what its words say ("so blue", "blue again" and a sampled "blue screen" all
    name blue), so near-misses of a small model still count as what they are about."""
    right = named = 0
    for m in msgs:
        text = m["text"].lower()
        colours = {c for c, words in COLOUR_WORDS.items() if any(w in text for w in words)}
        sounds = {s for s, words in SOUND_WORDS.items() if any(w in text for w in words)}
        if colours or sounds:
            named += 1
            # Viewers react 1-4 s after a change: the scene on screen then, or the one before.
            scenes = {stream.scene_at(m["t"]), stream.scene_at(max(0.0, m["t"] - 1.0))}
            right += any(s.colour in colours or s.sound in sounds for s in scenes)
    return right, named


# -- the same grids as ingest -------------------------------------------------------------------
def test_live_rows_are_exactly_what_ingest_reads_from_the_finished_file(tmp_path: Path):
    """Frames and 16 kHz audio that the live decoder puts on the grids, while the file grows,
    equal ingest's reads of the finished file: the encoders then give the same features."""
    import queue

    from vod2chat.inference.live import Decoder
    from vod2chat.inference.sources import FollowFile
    from vod2chat.ingest.media import probe, read_audio, read_frames

    path = tmp_path / "rec.ts"
    th, box = writer(plan_stream(seed=79, duration=8.0), path, speed=4.0)  # grows while being read
    q: queue.Queue = queue.Queue()
    dec = Decoder(FollowFile(path, stall_timeout=2.0), "", 2.0, (224, 224), q)  # 2 fps: rows between frames too
    dec.start()
    dec.join(60)
    th.join(10)
    items = list(q.queue)
    assert items[-1][:2] == ("end", "stalled")
    rows = [(k, rgb) for kind, k, rgb in (i for i in items if i[0] == "video")]
    assert [k for k, _ in rows] == list(range(len(rows))) and len(rows) >= 16
    wave = np.concatenate([i[1] for i in items if i[0] == "audio"])
    info = probe(path)
    assert abs(len(wave) / 16000 - info.duration) < 0.1 and abs(len(rows) / 2.0 - info.duration) < 0.6
    ref = read_frames(info, [k / 2.0 for k, _ in rows], (224, 224), backend="pyav")
    assert all(np.array_equal(r, rgb) for r, (_, rgb) in zip(ref, rows))
    assert len({rgb.tobytes() for _, rgb in rows}) > 8  # the scenes and the moving square: not one frame
    n = int((info.duration - 1.0) * 16000)
    ref_audio = read_audio(info, 0.0, n / 16000)
    assert np.array_equal(ref_audio, wave[:n]) and np.abs(ref_audio).max() > 0.1


# -- following a stream as it is written ---------------------------------------------------------
MIN_SHIFT_S = 8.0  # longer than a scene: messages shifted this far no longer line up with what they saw


def by_chance(stream: Stream, msgs: list[dict]) -> float:
    """The messages that would name the right scene if they were not about what is on screen:
    the same messages against the same stream, their times shifted circularly by every whole
    second from MIN_SHIFT_S to duration - MIN_SHIFT_S, averaged. It keeps what the messages say
    and what the stream shows overall, and breaks only the alignment the test is about."""
    shifts = np.arange(MIN_SHIFT_S, stream.duration - MIN_SHIFT_S + 1e-9, 1.0)
    return float(np.mean([reacts(stream, [{**m, "t": (m["t"] + d) % stream.duration} for m in msgs])[0]
                          for d in shifts]))


@pytest.mark.slow
def test_follows_a_growing_file_and_reacts_to_the_scene(synth_run: dict, tmp_path: Path):
    run = synth_run["run"]
    stream, other = plan_stream(seed=71, duration=40.0), plan_stream(seed=72, duration=120.0)
    path, out = tmp_path / "obs.ts", tmp_path / "live.jsonl"
    rate = 600  # many messages, and fewer misspellings: reactions to count
    sharp = ("--rate", str(rate), "--temperature", "0.5")
    proc, lines = start(live_cmd(run, str(path), "--out", str(out), "--stall-timeout", "4", *sharp))
    wait_ready(proc, out)
    th, box = writer(stream, path, speed=1.0)  # the file appears and grows in real time
    th.join(120)
    err = finish(proc, lines, timeout=600)
    assert proc.returncode == 0, err
    msgs = lines.messages()
    assert out.read_text().splitlines() == [line.rstrip("\n") for _, line in lines.items]
    assert [m["t"] for m in msgs] == sorted(m["t"] for m in msgs) and msgs[-1]["t"] <= stream.duration + END_SLACK_S
    # Messages came while the file was still growing, never before the stream reached their time.
    during = [m for (wall, _), m in zip(lines.items, msgs) if wall < box["end"]]
    assert len(during) >= 5 and len(msgs) >= 0.5 * rate * stream.duration / 60, (len(during), len(msgs))
    assert all(wall >= box["t0"] + m["t"] - 0.3 for (wall, _), m in zip(lines.items, msgs))
    assert "no new data" in err and "live: stalled" in err

    # What the messages name is what is on screen and playing far more often than by chance. This
    # once failed at fp32 on a loaded machine (9/48 right vs 7/35) when it took the 40 s stream's
    # messages alone (7 scenes, about 50 naming a scene) against a second live run over another
    # stream scored against this one: that baseline alone went from 0.12 to 0.46 with the stream
    # chosen. Now also 120 s of another stream read at full speed (22 scenes, about 300 naming
    # messages), each run against its own messages shifted in time. Seen on a loaded 2-core Intel,
    # both runs together: native (bf16) 0.18-0.21 above chance in 3 runs, fp32 0.22 and 0.23 in 2.
    done = tmp_path / "other.ts"
    write_live(other, done, speed=0)
    p2, l2 = start(live_cmd(run, str(done), "--stall-timeout", "1", *sharp))
    err2 = finish(p2, l2, timeout=600)
    assert p2.returncode == 0, err2
    runs = [(stream, msgs), (other, l2.messages())]
    right, named = (sum(x) for x in zip(*(reacts(s, m) for s, m in runs)))
    chance = sum(by_chance(s, m) for s, m in runs)
    print(f"reacts: {right}/{named} right, {chance:.1f} by chance ({len(msgs)} + {len(runs[1][1])} messages)")
    assert named >= 150, named
    assert right / named > chance / named + 0.1, (right, named, chance)


@pytest.mark.slow  # a 16 s stream written in real time
def test_follows_an_hls_playlist_on_loopback(random_encoder_run: Path, tmp_path: Path):
    site = tmp_path / "hls"
    site.mkdir()
    handler = functools.partial(QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/live.m3u8"
        stream = plan_stream(seed=73, duration=16.0)
        proc, lines = start(live_cmd(random_encoder_run, url, "--stall-timeout", "10", "--out", str(tmp_path / "o")))
        wait_ready(proc, tmp_path / "o")
        th, box = writer(stream, site / "live.m3u8", speed=1.0, fmt="hls", segment_s=1.0)
        th.join(60)
        err = finish(proc, lines, timeout=300)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, err
    assert "#EXT-X-ENDLIST" in (site / "live.m3u8").read_text() and "live: ended" in err
    msgs = lines.messages()
    during = [m for (wall, _), m in zip(lines.items, msgs) if wall < box["end"]]
    assert len(during) >= 5 and len(msgs) >= 0.5 * RATE * stream.duration / 60, (len(during), len(msgs))
    assert 0 < msgs[0]["t"] and msgs[-1]["t"] <= stream.duration + END_SLACK_S


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass


# -- failures ---------------------------------------------------------------------------------
def test_source_end_on_stdin_flushes_the_last_messages_and_exits_0(random_encoder_run: Path, tmp_path: Path):
    stream = plan_stream(seed=74, duration=10.0)
    proc, lines = start(live_cmd(random_encoder_run, "-", "--stall-timeout", "30"), stdin=subprocess.PIPE)
    write_live(stream, proc.stdin.buffer if hasattr(proc.stdin, "buffer") else proc.stdin, speed=0)
    proc.stdin.close()  # the end of the stream: well before the stall timeout
    err = finish(proc, lines, timeout=300)
    assert proc.returncode == 0, err
    assert "live: ended" in err and "no new data" not in err
    ts = [m["t"] for m in lines.messages()]
    assert len(ts) >= 0.5 * RATE * stream.duration / 60 and ts[-1] <= stream.duration + END_SLACK_S
    assert ts[-1] > stream.duration - 2.0  # messages up to the very end were written


def test_stalled_source_waits_says_so_and_ends_cleanly(random_encoder_run: Path, tmp_path: Path):
    path = tmp_path / "rec.ts"
    write_live(plan_stream(seed=75, duration=6.0), path, speed=0)  # then the encoder goes quiet
    t0 = time.monotonic()
    proc, lines = start(live_cmd(random_encoder_run, str(path), "--stall-timeout", "3"))
    err = finish(proc, lines, timeout=300)
    assert proc.returncode == 0, err
    assert re.search(r"no new data for \d+ s; waiting", err) and "live: stalled" in err, err
    assert time.monotonic() - t0 > 3.0 and "Traceback" not in err
    ts = [m["t"] for m in lines.messages()]
    assert ts and ts[-1] <= 6.0 + END_SLACK_S


def test_corrupt_packets_are_skipped_with_a_warning(random_encoder_run: Path, tmp_path: Path):
    path = tmp_path / "clean.ts"
    write_live(plan_stream(seed=76, duration=10.0), path, speed=0)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    mid = (len(data) // 2) // 188 * 188
    data[mid : mid + 188 * 12] = rng.integers(0, 256, 188 * 12, dtype=np.uint8).tobytes()  # 12 TS packets of noise
    proc, lines = start(live_cmd(random_encoder_run, "-", "--stall-timeout", "30"), stdin=subprocess.PIPE)
    proc.stdin.write(bytes(data)) if not hasattr(proc.stdin, "buffer") else proc.stdin.buffer.write(bytes(data))
    proc.stdin.close()
    err = finish(proc, lines, timeout=300)
    assert proc.returncode == 0, err
    assert "corrupt" in err and "live: ended" in err, err
    ts = [m["t"] for m in lines.messages()]
    assert ts[-1] > 8.0  # it went on past the damage to the end


def test_ctrl_c_exits_cleanly_keeping_every_line(random_encoder_run: Path, tmp_path: Path):
    path, out = tmp_path / "obs.ts", tmp_path / "live.jsonl"
    proc, lines = start(live_cmd(random_encoder_run, str(path), "--out", str(out)))
    wait_ready(proc, out)
    th, box = writer(plan_stream(seed=77, duration=30.0), path, speed=1.0)
    lines.wait(4, timeout=120)
    assert len(lines.items) >= 4
    proc.send_signal(signal.SIGINT)
    err = finish(proc, lines, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err and "live: interrupted" in err, err
    assert box.get("end") is None  # it stopped while the stream was still being written
    written = out.read_text().splitlines()
    assert written == [line.rstrip("\n") for _, line in lines.items] and len(written) >= 4
    assert all(json.loads(line)["text"] for line in written)


# -- real chat from Twitch IRC ----------------------------------------------------------------
class IrcServer(socketserver.ThreadingTCPServer):
    """Speaks just enough of Twitch IRC: welcomes, acknowledges CAP, confirms JOIN, pings, and
    sends tagged PRIVMSGs (plus lines the parser must skip). Records what the client sent."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, chat: list[str]):
        self.received: list[str] = []
        self.chat = chat
        super().__init__(("127.0.0.1", 0), IrcHandler)


class IrcHandler(socketserver.StreamRequestHandler):
    def send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        srv: IrcServer = self.server  # type: ignore[assignment]
        nick = "*"
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            srv.received.append(line)
            if line.startswith("CAP REQ"):
                self.send(f":tmi.twitch.tv CAP * ACK {line.split(' ', 2)[2]}")
            elif line.startswith("NICK "):
                nick = line.split()[1]
                self.send(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!")
            elif line.startswith("JOIN "):
                chan = line.split()[1]
                self.send(f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN {chan}")
                self.send("PING :tmi.twitch.tv")
                ts = int(time.time() * 1000)
                self.send(f":tmi.twitch.tv 353 {nick} = {chan} :{nick}")
                self.send("@badge-info=;tmi-sent-ts=notanumber :x!x@x PRIVMSG #c :skipped, no timestamp")
                for i, text in enumerate(srv.chat):
                    tags = f"@badge-info=;color=#FF0000;display-name=Viewer{i};id=abc-{i};tmi-sent-ts={ts + i}"
                    self.send(f"{tags} :viewer{i}!viewer{i}@viewer{i}.tmi.twitch.tv PRIVMSG {chan} :{text}")


def test_real_chat_from_twitch_irc_is_the_context(random_encoder_run: Path, tmp_path: Path):
    from vod2chat.inference.live import LiveConfig, main

    chat = ["first real message", "what is this colour", "KEKW real chat", "see you tomorrow"]
    srv = IrcServer(chat)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    path = tmp_path / "rec.ts"
    write_live(plan_stream(seed=78, duration=6.0), path, speed=0)
    try:
        res = main(LiveConfig(run=str(random_encoder_run), source=str(path), chat=f"irc://127.0.0.1:{srv.server_address[1]}/SomeChannel",
                              rate=RATE, stall_timeout=2.0, encoders=random_encoders(), device="cpu"))
    finally:
        srv.shutdown()
        srv.server_close()
    sent = srv.received
    assert any(re.fullmatch(r"NICK justinfan\d+", s) for s in sent), sent
    assert "JOIN #somechannel" in sent and any(s.startswith("CAP REQ") and "twitch.tv/tags" in s for s in sent)
    assert "PONG :tmi.twitch.tv" in sent
    assert not any(s.split(" ")[0] in ("PRIVMSG", "PASS") for s in sent), sent  # read-only, no credentials
    assert res.end == "stalled" and res.messages
    # Generated messages see the channel's chat (tags parsed by the chat parser), not their own.
    assert res.contexts[-1] == chat[-2:]
    assert all(set(c) <= set(chat) for c in res.contexts)


def test_an_hls_playlist_cannot_point_at_local_files(tmp_path: Path):
    """A playlist is untrusted input: segment URIs other than http(s) are refused, never read."""
    from vod2chat.inference.sources import HlsSource, parse_playlist

    secret = tmp_path / "secret.ts"
    secret.write_bytes(b"G" * 188 * 4)
    site = tmp_path / "hls"
    site.mkdir()
    (site / "live.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret.as_uri()}\n#EXT-X-ENDLIST\n")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        src = HlsSource(f"http://127.0.0.1:{httpd.server_address[1]}/live.m3u8", stall_timeout=5.0)
        assert src.read(1 << 16) == b"" and src.bytes_read == 0
        assert isinstance(src.error, ValueError) and "only http:// and https://" in str(src.error)
    finally:
        httpd.shutdown()
        httpd.server_close()
    segs, ended, target, variants = parse_playlist(
        "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2,\na.ts\n#EXTINF:2,\nsub/b.ts\n", "http://h/x/live.m3u8")
    assert segs == [(7, "http://h/x/a.ts"), (8, "http://h/x/sub/b.ts")] and not ended and not variants
    with pytest.raises(ValueError, match="encrypted"):
        parse_playlist("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n", "http://h/live.m3u8")
