"""`vod2chat`: one thin command line over each stage's main(cfg)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from launch.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def store_table(url: str) -> str:
    from shards.store import Store

    rows = Store(url).summary()
    head = f"{'streamer':<20} {'vods':>5} {'hours':>8} {'messages':>9} {'segments':>9} {'shards':>6} {'bytes':>10}"
    lines = [head, "-" * len(head)]
    tot = {"vods": 0, "hours": 0.0, "messages": 0, "segments": 0, "shards": 0, "bytes": 0}
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['vods']:>5.0f} {r['hours']:>8.3f} {r['messages']:>9.0f} {r['segments']:>9.0f} "
                     f"{r['shards']:>6.0f} {_human_bytes(r['bytes']):>10}")
        for k in tot:
            tot[k] += r[k]
    lines.append(f"{'total':<20} {tot['vods']:>5.0f} {tot['hours']:>8.3f} {tot['messages']:>9.0f} "
                 f"{tot['segments']:>9.0f} {tot['shards']:>6.0f} {_human_bytes(tot['bytes']):>10}")
    return "\n".join(lines)


def cmd_ingest(a: argparse.Namespace) -> int:
    from ingest.config import IngestConfig
    from ingest.driver import main as ingest_main

    ov = list(a.set)
    for flag, key in (("store", "store"), ("streamer", "streamer"), ("address", "address"), ("device", "device"),
                      ("video_weights", "video_weights"), ("audio_weights", "audio_weights"),
                      ("num_actors", "num_actors"), ("stream_start", "stream_start")):
        if getattr(a, flag) is not None:
            ov.append(f"{key}={json.dumps(getattr(a, flag))}")
    if a.weights:
        ov += [f"video_weights={json.dumps(a.weights)}", f"audio_weights={json.dumps(a.weights)}"]
    if a.replace:
        ov.append("replace=true")
    cfg = load_config(IngestConfig, a.config, ov)
    cfg.inputs = a.inputs or cfg.inputs
    summary = ingest_main(cfg)
    print(summary.table())
    return 1 if summary.failed else 0


def cmd_store(a: argparse.Namespace) -> int:
    from shards.store import Store

    if a.action == "ls":
        print(store_table(a.store))
        return 0
    store = Store(a.store)
    if a.action == "verify":
        rep = store.verify()
        print(f"{rep.vods} VODs, {rep.shards} shards checked; {len(rep.problems)} problems; {len(rep.orphans)} orphans")
        for p in rep.problems:
            print(f"PROBLEM {p}")
        for o in rep.orphans:
            print(f"orphan  {o}  (not in any VOD record: `vod2chat store gc` removes it)")
        return 0 if rep.ok else 1
    removed = store.gc(min_age_s=a.min_age, dry_run=a.dry_run)
    print(("would remove" if a.dry_run else "removed"), len(removed), "orphan file(s)")
    for r in removed:
        print(f"  {r}")
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from ingest.synth import synthesize

    video, chat = synthesize(a.out, seed=a.seed, duration=a.duration, vod_id=a.vod_id)
    print(f"wrote {video}\nwrote {chat}")
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from ingest.download import DownloadConfig
    from ingest.download import main as download_main

    cfg = DownloadConfig(out=a.out, streamer=a.streamer or "", last=a.last, vods=a.vods, quality=a.quality,
                         chat_tool=a.chat_tool)
    report = download_main(cfg)
    print(f"downloaded {len(report['downloaded'])}, already there {len(report['skipped'])}, failed {len(report['failed'])}")
    for f in report["failed"]:
        print(f"FAILED {f}")
    return 1 if report["failed"] else 0


def cmd_demo(a: argparse.Namespace) -> int:
    from launch.demo import main as demo_main

    return demo_main(Path(a.out), quick=a.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vod2chat", description="Learn what a stream's chat says from what it shows and sounds like.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    i = sub.add_parser("ingest", help="VODs + chat logs -> shard store (Ray fan-out)",
                       description="Pair videos and chat logs by VOD id (2424877187.mkv + 2424877187.irc), "
                                   "embed them and write WebDataset shards into the store.")
    i.add_argument("inputs", nargs="*", help="video and chat files, or directories of them")
    i.add_argument("--config", default=None, help="TOML ingest config (e.g. launch/ingest.toml)")
    i.add_argument("--store", help="store directory or fsspec URL (default ./store)")
    i.add_argument("--streamer", help="channel name the VODs belong to")
    i.add_argument("--address", help="Ray cluster address ('auto' on a node of `ray up cluster.yaml`); default: a local Ray")
    i.add_argument("--device", help="auto | cpu | cuda")
    i.add_argument("--weights", help="'random' for random-initialised encoders (offline demos; recorded in the store)")
    i.add_argument("--video-weights", help="ResNet-50 state_dict path (default: torch hub cache)")
    i.add_argument("--audio-weights", help="VGGish state_dict path (default: torch hub cache)")
    i.add_argument("--num-actors", type=int, help="Ray actors (default: one per GPU, else per 2 CPUs)")
    i.add_argument("--stream-start", type=float, help="unix time the stream started (raw IRC logs)")
    i.add_argument("--replace", action="store_true", help="re-ingest VODs already stored with other settings")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any IngestConfig field, e.g. --set segment_s=20")
    i.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("store", help="inspect or clean a shard store")
    s.add_argument("action", choices=["ls", "verify", "gc"], help="ls: totals; verify: checksums, counts, orphans; gc: remove orphans")
    s.add_argument("store", help="store directory or fsspec URL")
    s.add_argument("--min-age", type=float, default=3600.0, help="gc: keep orphans younger than this many seconds (an ingest may be writing them)")
    s.add_argument("--dry-run", action="store_true", help="gc: only list")
    s.set_defaults(fn=cmd_store)

    y = sub.add_parser("synth", help="write a synthetic stream (video + chat that reacts to it)")
    y.add_argument("--out", default="synth", help="output directory")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--duration", type=float, default=120.0, help="seconds")
    y.add_argument("--vod-id", default="100001")
    y.set_defaults(fn=cmd_synth)

    w = sub.add_parser("download", help="Twitch VODs + chat into a folder that ingest pairs by VOD id",
                       description="Needs the optional extra: pip install 'vod2chat[download]'. Sub-only VODs: set "
                                   "TWITCH_AUTH_TOKEN. Re-runs skip complete files and resume partial ones.")
    w.add_argument("vods", nargs="*", help="VOD ids or https://www.twitch.tv/videos/<id> URLs")
    w.add_argument("--streamer", help="download this channel's most recent archived VODs")
    w.add_argument("--last", type=int, default=10, help="with --streamer: how many (default 10)")
    w.add_argument("--out", default="vods", help="output folder (default vods/)")
    w.add_argument("--quality", default="480p", help="twitch-dl quality (default 480p: frames are embedded at 224x224)")
    w.add_argument("--chat-tool", default="twitch-dl", choices=["twitch-dl", "chat-downloader"])
    w.set_defaults(fn=cmd_download)

    d = sub.add_parser("demo", help="the whole chain on a synthetic stream, on a local Ray and CPU")
    d.add_argument("--out", default="demo_out", help="where the store and outputs go")
    d.add_argument("--quick", action="store_true", help="smaller and faster (tests)")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"vod2chat {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
