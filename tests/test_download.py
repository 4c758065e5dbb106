"""`vod2chat download` up to the network boundary: commands, pairing, resume, error messages.
The network tools are replaced by small executables that behave like them offline."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from vod2chat.ingest.download import DownloadConfig, DownloadError, chat_command, main, parse_vod_id, video_command
from helpers import pair_inputs

FAKE_TWITCH_DL = r'''#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
log = open({log!r}, "a"); log.write(" ".join(args) + "\n"); log.close()
env = open({log!r} + ".env", "a"); env.write(os.environ.get("TWITCH_DL_DOWNLOAD_AUTH_TOKEN", "-") + "\n"); env.close()
if {fail!r}:
    sys.stderr.write({fail!r}); sys.exit(1)
if args[0] == "videos":
    print(json.dumps({{"count": 2, "totalCount": 2, "videos": [{{"id": "1111111"}}, {{"id": "2222222"}}]}}))
elif args[0] == "download":
    shutil.copy({video!r}, args[args.index("--output") + 1])
elif args[:2] == ["chat", "json"]:
    shutil.copy({chat!r}, args[args.index("--output") + 1])
'''


def fake_tool(tmp_path: Path, real_data: Path, fail: str = "") -> tuple[Path, Path]:
    log = tmp_path / "calls.log"
    exe = tmp_path / "bin" / "twitch-dl"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(FAKE_TWITCH_DL.format(python=sys.executable, log=str(log), fail=fail,
                                         video=str(real_data / "video/in1.mp4"),
                                         chat=str(real_data / "chat/v5_rechat_410474822.json.gz")))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe, log


def test_parse_vod_id():
    assert parse_vod_id("2424877187") == "2424877187"
    assert parse_vod_id("https://www.twitch.tv/videos/2424877187?t=1h") == "2424877187"
    assert parse_vod_id("v2424877187") == "2424877187"
    with pytest.raises(ValueError, match="not a Twitch VOD id"):
        parse_vod_id("https://www.twitch.tv/tsoding")


def test_commands(monkeypatch, tmp_path: Path):
    cfg = DownloadConfig(out=str(tmp_path), quality="720p")
    cmd = video_command(cfg, "123456", tmp_path / ".123456.part.mkv")
    assert cmd[:3] == ["twitch-dl", "download", "123456"] and cmd[cmd.index("--quality") + 1] == "720p"
    assert "--auth-token" not in cmd
    monkeypatch.setenv("TWITCH_AUTH_TOKEN", "tok")
    assert "tok" not in video_command(cfg, "123456", tmp_path / "x.mkv")  # never on a command line (ps)
    assert chat_command(cfg, "123456", tmp_path / "c.json")[:4] == ["twitch-dl", "chat", "json", "123456"]
    cd = chat_command(DownloadConfig(chat_tool="chat-downloader"), "123456", tmp_path / "c.json")
    assert cd[:2] == ["chat_downloader", "https://www.twitch.tv/videos/123456"]


def test_download_pairs_for_ingest_and_resumes(tmp_path: Path, real_data: Path):
    exe, log = fake_tool(tmp_path, real_data)
    out = tmp_path / "vods"
    cfg = DownloadConfig(out=str(out), streamer="tsoding", last=2, twitch_dl=str(exe), progress=False)
    # An interrupted earlier run left a partial file: it is neither paired nor kept.
    out.mkdir()
    (out / ".1111111.part.mkv").write_bytes(b"half")
    report = main(cfg)
    assert report == {"downloaded": ["1111111", "2222222"], "skipped": [], "failed": []}
    jobs = pair_inputs([str(out)], "tsoding")
    assert [(j.vod_id, Path(j.video).name, Path(j.chat).name) for j in jobs] == [
        ("1111111", "1111111.mkv", "1111111.json"), ("2222222", "2222222.mkv", "2222222.json")]
    assert not list(out.glob(".*part*"))
    calls = log.read_text().splitlines()
    assert calls[0].startswith("videos tsoding --json --limit 2")
    # A second run skips what is complete and only fetches what is missing.
    (out / "2222222.json").unlink()
    log.unlink()
    report = main(cfg)
    assert report["downloaded"] == ["2222222"] and report["skipped"] == ["1111111"]
    assert [c.split()[0:2] for c in log.read_text().splitlines()] == [["videos", "tsoding"], ["chat", "json"]]


@pytest.mark.parametrize("stderr,expect", [
    ("httpx.ConnectError: [Errno -3] Temporary failure in name resolution", "cannot reach Twitch"),
    ("Error: 401 Unauthorized", "TWITCH_AUTH_TOKEN"),
])
def test_failures_explain_themselves(tmp_path: Path, real_data: Path, stderr: str, expect: str):
    exe, _ = fake_tool(tmp_path, real_data, fail=stderr)
    cfg = DownloadConfig(out=str(tmp_path / "vods"), vods=["3333333"], twitch_dl=str(exe), progress=False)
    report = main(cfg)
    assert report["failed"] and expect in report["failed"][0]
    with pytest.raises(DownloadError, match=expect):
        main(DownloadConfig(out=str(tmp_path / "vods"), streamer="x", twitch_dl=str(exe), progress=False))


def test_missing_tool_says_how_to_install(tmp_path: Path):
    cfg = DownloadConfig(out=str(tmp_path), vods=["4444444"], twitch_dl="no-such-twitch-dl", progress=False)
    assert "pip install 'vod2chat[download]'" in main(cfg)["failed"][0]


def test_auth_token_goes_through_the_environment_never_argv(tmp_path: Path, real_data: Path, monkeypatch):
    exe, log = fake_tool(tmp_path, real_data)
    monkeypatch.setenv("TWITCH_AUTH_TOKEN", "s3cr3t-token-value")
    report = main(DownloadConfig(out=str(tmp_path / "vods"), vods=["5555555"], twitch_dl=str(exe), progress=False))
    assert report["downloaded"] == ["5555555"]
    calls = log.read_text().splitlines()
    envs = Path(f"{log}.env").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["download", "chat"]
    assert not any("s3cr3t" in c for c in calls)  # what `ps` would show
    assert envs[0] == "s3cr3t-token-value"  # what twitch-dl reads for `download --auth-token`
