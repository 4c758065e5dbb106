"""`vod2chat download`: a streamer's last VODs (or given ids/URLs) and their chat, laid out the
way ingest pairs them: `{out}/{vod_id}.mkv` + `{out}/{vod_id}.json`.

The network work is done by twitch-dl (video, and chat as `twitch-dl chat json`) or
chat-downloader (chat), run as subprocesses; this module builds their commands, skips what is
already complete, resumes the rest, and turns their failures into messages that say what to do.
Files are written under hidden `.{id}.part.*` names and renamed when complete, so a half-finished download
is never mistaken for a VOD. twitch-dl keeps downloaded video segments in its own cache, so a
re-run continues a VOD instead of starting it over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vod2chat.config import param


@dataclass
class DownloadConfig:
    out: str = param("vods", "output folder")
    streamer: str = param("", "download this channel's most recent archived VODs (how many: --last)")
    last: int = param(10, "with --streamer: how many", ge=1)
    vods: list[str] = param(factory=list, help="VOD ids or https://www.twitch.tv/videos/<id> URLs", positional=True)
    quality: str = param("480p", "twitch-dl quality; frames are embedded at 224x224, so 480p is plenty")
    chat_tool: str = param("twitch-dl", "the chat downloader", choices=["twitch-dl", "chat-downloader"])
    twitch_dl: str = param("twitch-dl", "executables: names on PATH or paths")
    chat_downloader: str = param("chat_downloader", "the chat-downloader executable")
    progress: bool = param(True, "progress bars")


class DownloadError(RuntimeError):
    pass


_URL_RE = re.compile(r"(?:twitch\.tv/videos/|^v?)(\d{5,})(?:\D|$)")


def parse_vod_id(s: str) -> str:
    m = _URL_RE.search(s.strip())
    if not m:
        raise ValueError(f"{s!r} is not a Twitch VOD id or https://www.twitch.tv/videos/<id> URL")
    return m.group(1)


def list_command(cfg: DownloadConfig) -> list[str]:
    return [cfg.twitch_dl, "videos", cfg.streamer, "--json", "--limit", str(cfg.last), "--type", "archive"]


def video_command(cfg: DownloadConfig, vod_id: str, dest: Path) -> list[str]:
    # No --auth-token here: a command line is visible to every user of the machine (ps); the
    # token goes through the environment (tool_env).
    return [cfg.twitch_dl, "download", vod_id, "--quality", cfg.quality, "--format", "mkv",
            "--output", str(dest), "--overwrite"]


def tool_env() -> dict[str, str]:
    """The tools' environment: TWITCH_AUTH_TOKEN (sub-only VODs) becomes the variable twitch-dl
    (>= 2.2) reads for `download --auth-token`."""
    env = dict(os.environ)
    if env.get("TWITCH_AUTH_TOKEN"):
        env["TWITCH_DL_DOWNLOAD_AUTH_TOKEN"] = env["TWITCH_AUTH_TOKEN"]
    return env


def chat_command(cfg: DownloadConfig, vod_id: str, dest: Path) -> list[str]:
    if cfg.chat_tool == "chat-downloader":
        return [cfg.chat_downloader, f"https://www.twitch.tv/videos/{vod_id}", "--output", str(dest), "--quiet"]
    if cfg.chat_tool != "twitch-dl":
        raise ValueError(f"chat_tool must be twitch-dl or chat-downloader, got {cfg.chat_tool!r}")
    return [cfg.twitch_dl, "chat", "json", vod_id, "--output", str(dest), "--overwrite"]


def explain(tool: str, stderr: str) -> str:
    """A failed tool's stderr -> what the user should do."""
    low = stderr.lower()
    if any(s in low for s in ("name or service not known", "temporary failure in name resolution",
                              "connection refused", "connecterror", "network is unreachable", "timed out")):
        return f"{tool} cannot reach Twitch: check the network connection or proxy settings"
    if any(s in low for s in ("401", "unauthorized", "subscriber", "sub-only", "forbidden", "403")):
        return f"{tool}: this VOD needs a Twitch login: set TWITCH_AUTH_TOKEN to your auth-token cookie"
    if "not found" in low or "404" in low:
        return f"{tool}: VOD or channel not found (deleted, expired, or a typo)"
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
    return f"{tool} failed: {tail}"


def run_tool(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise DownloadError(f"{cmd[0]} is not installed: pip install 'vod2chat[download]' (or put it on PATH)")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
    if proc.returncode != 0:
        raise DownloadError(explain(Path(cmd[0]).name, proc.stderr + proc.stdout))
    return proc.stdout


def vod_ids(cfg: DownloadConfig) -> list[str]:
    ids = [parse_vod_id(v) for v in cfg.vods]
    if cfg.streamer:
        listing = json.loads(run_tool(list_command(cfg)))
        ids += [str(v["id"]) for v in listing.get("videos", [])]
    if not ids:
        raise ValueError("nothing to download: give --streamer NAME (with --last N) or VOD ids/URLs")
    return list(dict.fromkeys(ids))


def fetch(cmd_for, final: Path) -> bool:
    """Run a download into `final.part`, rename when complete. False: it was already there."""
    if final.exists():
        return False
    # Hidden (ingest skips dot files) and ending in the real suffix (ffmpeg picks the container from it).
    part = final.with_name(f".{final.stem}.part{final.suffix}")
    run_tool(cmd_for(part))
    if not part.exists():
        raise DownloadError(f"the download reported success but wrote no {part}")
    part.rename(final)
    return True


def main(cfg: DownloadConfig) -> dict[str, list[str]]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {"downloaded": [], "skipped": [], "failed": []}
    for vid in tqdm(vod_ids(cfg), unit="vod", desc="download", disable=not cfg.progress):
        try:
            got_video = fetch(lambda p: video_command(cfg, vid, p), out / f"{vid}.mkv")
            got_chat = fetch(lambda p: chat_command(cfg, vid, p), out / f"{vid}.json")
        except DownloadError as e:
            report["failed"].append(f"{vid}: {e}")
            continue
        report["downloaded" if got_video or got_chat else "skipped"].append(vid)
    return report
