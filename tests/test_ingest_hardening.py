"""Hostile and awkward ingest inputs (issue 18): a 100 MB chat line, a gzip bomb, a playlist or
concat script saved as .mp4, inputs that do not all pair, and `ingest --dry-run`. Real files
written here (and the real samples in ../shared), the real parser, prober and CLI; no Ray."""
from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from vod2chat.ingest.chat import MAX_LINE_BYTES, ChatTooLargeError, Message, parse_chat, write_irc
from vod2chat.ingest.config import IngestConfig
from vod2chat.ingest.media import MediaError, probe
from vod2chat.ingest.worker import find_pairs, plan_vod
from vod2chat.shards.store import Store


def peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- one huge message -------------------------------------------------------------------------
def test_a_huge_chat_line_is_cut_counted_and_never_held_whole(tmp_path: Path):
    path = tmp_path / "1.irc"
    with path.open("w") as f:
        f.write("[0:00:01] <a> hello\n[0:00:02] <b> ")
        for _ in range(24):  # 30 MB of one message (the probe used 100 MB: the same path)
            f.write("spam " * (1 << 18))
        f.write("\n[0:00:03] <c> bye\n")
    log, peak = peak_bytes(lambda: parse_chat(path))
    assert [m.text for m in log.messages] == ["hello", ("spam " * 100)[:500].strip(), "bye"]
    assert log.truncated == 1 and "1 over-long messages truncated" in log.summary()
    # The line was read past in chunks: memory stays near one cut line, never the 30 MB (nor copies of it).
    assert peak < 8 * MAX_LINE_BYTES + (4 << 20), peak


def test_long_messages_and_names_are_cut_in_every_format(tmp_path: Path):
    long = "x" * 2000
    v5 = tmp_path / "v5.json"
    v5.write_text(json.dumps({"comments": [
        {"content_offset_seconds": 1.0, "commenter": {"display_name": "a"}, "message": {"body": long}},
        {"content_offset_seconds": 2.0, "commenter": {"display_name": "n" * 300}, "message": {"body": "ok"}},
        {"content_offset_seconds": 3.0, "commenter": {"display_name": "c"}, "message": {"body": "short"}}]}))
    log = parse_chat(v5)
    assert [len(m.text) for m in log.messages] == [500, 2, 5] and len(log.messages[1].user) == 64
    assert log.truncated == 2
    irc = tmp_path / "tags.irc"
    irc.write_text(f"@display-name=A;tmi-sent-ts=1000000 :a!a@a PRIVMSG #c :{long}\n"
                   "@display-name=B;tmi-sent-ts=1001000 :b!b@b PRIVMSG #c :fine\n")
    log = parse_chat(irc, max_chars=100)
    assert [m.text for m in log.messages] == ["x" * 100, "fine"] and log.truncated == 1


# -- gzip bomb ----------------------------------------------------------------------------------
def write_bomb(path: Path, mib: int) -> None:
    """A v5 chat that inflates to `mib` MiB from a few hundred KiB on disk."""
    rec = json.dumps({"content_offset_seconds": 1.0, "commenter": {"display_name": "a"}, "message": {"body": "x"}})
    block = ((rec + ",") * ((1 << 20) // (len(rec) + 1))).encode()
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b'{"comments": [')
        for _ in range(mib):
            f.write(block)
        f.write(rec.encode() + b"]}")


def test_a_gzip_bomb_stops_at_its_cap_in_bounded_memory(tmp_path: Path):
    bomb = tmp_path / "666.json.gz"
    write_bomb(bomb, 64)
    assert bomb.stat().st_size < 1 << 20  # small on disk
    with pytest.raises(ChatTooLargeError, match=r"666.json.gz: chat log inflates past 4.0 MiB") as e:
        peak_bytes(lambda: parse_chat(bomb, max_bytes=4 << 20))
    assert "chat_max_mb" in str(e.value) and "per second of video" in str(e.value)
    _, peak = peak_bytes(lambda: pytest.raises(ChatTooLargeError, parse_chat, bomb, max_bytes=4 << 20))
    assert peak < 16 << 20, peak  # never the 64 MiB it inflates to
    # Under its cap the same file reads (a real chat this big for a long VOD is fine).
    small = tmp_path / "7.json.gz"
    write_bomb(small, 1)
    assert len(parse_chat(small, max_bytes=4 << 20).messages) > 5000


def test_a_gzip_bomb_fails_its_vod_by_name_with_a_cap_from_the_vod_length(real_data: Path, tmp_path: Path):
    (tmp_path / "666.mp4").symlink_to(real_data / "video/in1.mp4")  # 7 s
    write_bomb(tmp_path / "666.json.gz", 16)
    cfg = IngestConfig(store=str(tmp_path / "store"), streamer="s", inputs=[str(tmp_path)], chat_max_mb=1.0,
                       chat_max_kb_per_s=64.0, segment_s=10.0, lookback_s=5.0)
    assert cfg.chat_max_bytes(7.0) == (1 << 20) + 7 * 64 * 1024
    [job] = find_pairs(cfg.inputs, cfg.streamer).jobs
    with pytest.raises(ChatTooLargeError, match=r"666.json.gz: chat log inflates past 1.4 MiB"):
        plan_vod(job, cfg, {"video": {}, "audio": {}}, Store(cfg.store))
    # The defaults (16 MiB + 128 KiB per second) read a real chat log of the same video.
    (tmp_path / "666.json.gz").unlink()
    (tmp_path / "666.json").symlink_to(real_data / "chat/chat_downloader_replay_a.json")
    [job] = find_pairs(cfg.inputs, cfg.streamer).jobs
    plan = plan_vod(job, IngestConfig(store=cfg.store, streamer="s"), {"video": {}, "audio": {}}, Store(cfg.store))
    assert plan.chat_format == "chat-downloader" and plan.chat_truncated == 0


# -- playlists disguised as video -----------------------------------------------------------
@pytest.mark.parametrize("text", ["ffconcat version 1.0\nfile 'beside.mp4'\n",
                                  "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nbeside.mp4\n#EXT-X-ENDLIST\n",
                                  '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"></MPD>\n'])
def test_a_concat_script_or_playlist_named_mp4_is_refused_unopened(real_data: Path, tmp_path: Path, text: str):
    (tmp_path / "beside.mp4").symlink_to(real_data / "video/in1.mp4")
    fake = tmp_path / "2424877187.mp4"
    fake.write_text(text)
    with pytest.raises(MediaError, match=r"2424877187.mp4: is a text file .* not a video"):
        probe(fake)
    assert probe(tmp_path / "beside.mp4").duration > 6  # the real file beside it is fine


# -- pairing and --dry-run --------------------------------------------------------------------
def test_what_pairs_is_kept_and_the_rest_is_named(real_data: Path, tmp_path: Path):
    (tmp_path / "1.mp4").symlink_to(real_data / "video/in1.mp4")
    (tmp_path / "1.json").symlink_to(real_data / "chat/chat_downloader_replay_a.json")
    (tmp_path / "2.mp4").symlink_to(real_data / "video/in1.mp4")  # no chat
    (tmp_path / "2.pdf").write_text("%PDF-1.4 not a chat log: nothing pairs it")
    (tmp_path / "3.chat.json").write_text("[]")  # a generated chat, no video
    p = find_pairs([str(tmp_path)], "s")
    assert [j.vod_id for j in p.jobs] == ["1"]
    assert len(p.problems) == 1 and "no chat log for video" in p.problems[0] and "2.mp4" in p.problems[0]
    assert [Path(c).name for c in p.lone_chats] == ["3.chat.json"]


def test_dry_run_shows_pairs_formats_and_problems_without_ray(real_data: Path, tmp_path: Path, capsys):
    import ray

    from vod2chat.launch.cli import main as cli

    vods = tmp_path / "vods"
    vods.mkdir()
    (vods / "1.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "1.json").symlink_to(real_data / "chat/chat_downloader_replay_a.json")
    (vods / "2.mp4").symlink_to(real_data / "video/nasa_13013.mp4")
    (vods / "2.txt").symlink_to(real_data / "chat/tcd_irc_569086201.txt")
    (vods / "3.mp4").symlink_to(real_data / "video/in1.mp4")  # without chat
    (vods / "4.mp4").symlink_to(real_data / "video/in1.mp4")
    (vods / "4.txt").write_text("not a chat log at all\nnor this\n")
    args = ["ingest", "--store", str(tmp_path / "store"), "--streamer", "s", "--dry-run", str(vods)]
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert f"s/1: {vods / '1.mp4'} + {vods / '1.json'}: chat format chat-downloader" in out
    assert "s/2: " in out and "chat format tcd-irc" in out
    assert f"UNPAIRED no chat log for video {vods / '3.mp4'}" in out
    assert "s/4: " in out and "CANNOT INGEST: " in out and "4.txt: not a chat log" in out
    assert "3 pair(s), 1 input problem(s); dry run: nothing started" in out
    assert not ray.is_initialized() and not (tmp_path / "store").exists()
    (vods / "3.mp4").unlink()
    (vods / "4.mp4").unlink()
    assert cli(args) == 0


def test_irc_names_with_angle_brackets_are_written_not_refused(tmp_path: Path):
    out = tmp_path / "x.irc"
    write_irc([Message(1.0, "a>b", "hi"), Message(2.0, "c\nd", "yo")], out)
    assert [(m.user, m.text) for m in parse_chat(out).messages] == [("a_b", "hi"), ("c_d", "yo")]
