"""`vod2chat`: one thin command line over each stage's main(cfg)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from vod2chat.config import ConfigError, load_config
from vod2chat.launch.tables import store_table

REPO = Path(__file__).resolve().parents[1]


def cmd_ingest(a: argparse.Namespace) -> int:
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.ingest.driver import main as ingest_main

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
    from vod2chat.shards.store import Store

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
    from vod2chat.ingest.synth import synthesize

    video, chat = synthesize(a.out, seed=a.seed, duration=a.duration, vod_id=a.vod_id)
    print(f"wrote {video}\nwrote {chat}")
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from vod2chat.ingest.download import DownloadConfig
    from vod2chat.ingest.download import main as download_main

    cfg = DownloadConfig(out=a.out, streamer=a.streamer or "", last=a.last, vods=a.vods, quality=a.quality,
                         chat_tool=a.chat_tool)
    report = download_main(cfg)
    print(f"downloaded {len(report['downloaded'])}, already there {len(report['skipped'])}, failed {len(report['failed'])}")
    for f in report["failed"]:
        print(f"FAILED {f}")
    return 1 if report["failed"] else 0


def cmd_tokenizer(a: argparse.Namespace) -> int:
    from vod2chat.trainer.config import Config
    from vod2chat.trainer.data import iter_texts
    from vod2chat.trainer.tokenizer import ChatTokenizer

    overrides = list(a.overrides) + ([f"data.store={a.store}"] if a.store else [])
    cfg = load_config(Config, a.config, overrides)
    tok = ChatTokenizer.train(iter_texts(cfg.data, "train"), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(a.out)
    print(f"{tok!r} -> {a.out}  (use it with tokenizer.path={a.out})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from vod2chat.launch.demo import main as demo_main

    return demo_main(Path(a.out), quick=a.quick)


def cmd_eval(a: argparse.Namespace) -> int:
    from vod2chat.inference.evaluate import EvalConfig
    from vod2chat.inference.evaluate import main as eval_main

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(EvalConfig) if hasattr(a, f.name)}
    kw["ablations"] = [x for x in str(a.ablations).split(",") if x]
    eval_main(EvalConfig(**kw))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from vod2chat.inference.generate import GenerateConfig
    from vod2chat.inference.generate import main as generate_main

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(GenerateConfig) if hasattr(a, f.name)}
    if getattr(a, "weights", None):
        kw["video_weights"] = kw["audio_weights"] = a.weights
    generate_main(GenerateConfig(**kw))
    return 0


def cmd_live(a: argparse.Namespace) -> int:
    from vod2chat.inference.live import LiveConfig
    from vod2chat.inference.live import main as live_main

    kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(LiveConfig) if getattr(a, f.name, None) is not None}
    if getattr(a, "weights", None):
        kw["video_weights"] = kw["audio_weights"] = a.weights
    live_main(LiveConfig(**kw))
    return 0


LIVE_HELP = {
    "run": "run directory (its latest checkpoint) or a checkpoint directory",
    "source": "a video file still being written (MPEG-TS, Matroska, FLV), an HLS playlist URL, or - for MPEG-TS on stdin",
    "out": "also append each message here as a JSON line",
    "serve": "HOST:PORT of the overlay page for OBS (a browser source), e.g. 127.0.0.1:8765",
    "chat": "irc://irc.chat.twitch.tv/CHANNEL: the channel's real chat as context (anonymous, read-only)",
    "rate": "messages per minute (default: the training chat's)",
    "stall_timeout": "seconds without new data before the stream counts as over",
}


def add_config_args(p: argparse.ArgumentParser, cls: type, helps: dict[str, str], required: tuple[str, ...] = ()) -> None:
    """One --flag per field of a stage's config dataclass; unset flags keep the dataclass default."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        base = next((x for x in typing.get_args(t) if x is not type(None)), t) if typing.get_args(t) else t
        kind = base if base in (int, float) else str
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None, required=f.name in required,
                       help=helps.get(f.name, "") + ("" if f.name in required else f" (default: {f.default!r})"))


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling; 1: off")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style, on tokens already generated")


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

    t = sub.add_parser("tokenizer", help="train the chat tokenizer on a store's train split",
                       description="Byte-level BPE on the chat of the train split that a training config selects "
                                   "(held-out VODs never contribute). `train` builds one itself when "
                                   "tokenizer.path is empty; this makes one to share across runs.")
    t.add_argument("--store", default="", help="the store (overrides data.store)")
    t.add_argument("--config", default=str(Path(__file__).with_name("base.toml")), help="training config (TOML)")
    t.add_argument("--out", required=True, help="where tokenizer.json goes")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. tokenizer.vocab_size=8000 data.streamers=[\"x\"]")
    t.set_defaults(fn=cmd_tokenizer)

    d = sub.add_parser("demo", help="the whole chain on a synthetic stream, on a local Ray and CPU")
    d.add_argument("--out", default="demo_out", help="where the store and outputs go")
    d.add_argument("--quick", action="store_true", help="smaller and faster (tests)")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("eval", help="perplexity, LiveBot ranking, A/V ablations and diversity on held-out VODs",
                       description="Evaluate a run on a split of its store (held out by VOD). Candidate sets are "
                                   "saved in {store}/eval/ and reused, so every model is ranked on the same sets.")
    e.add_argument("--run", required=True, help="run directory (its latest checkpoint) or a checkpoint directory")
    e.add_argument("--store", default="", help="store (default: the run's data.store)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--candidates", type=int, default=100, help="candidates per moment, the real message included")
    e.add_argument("--n-popular", type=int, default=20, help="most popular training messages among the candidates")
    e.add_argument("--n-tfidf", type=int, default=20, help="training messages nearest to the context (TF-IDF)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-moments", type=int, default=1000, help="a seeded subset of the split's messages (0: all)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", default="", help="JSON report (default {run}/eval-{split}.json)")
    e.add_argument("--candidates-file", default="", help="default {store}/eval/candidates-{split}-seed{seed}-{id}.json")
    e.add_argument("--ablations", default="full,av_shuffled,audio_only,video_only,chat_only", help="comma-separated")
    e.add_argument("--num-diversity-samples", type=int, default=200, help="messages sampled for distinct-n (0: skip)")
    add_sampling_args(e)
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.set_defaults(fn=cmd_eval)

    g = sub.add_parser("generate", help="timestamped chat for a VOD: JSON, irc text, .ass subtitles, HTML replay",
                       description="Features are computed on the fly with the encoders the run's store was made "
                                   "with (their fingerprints must match the checkpoint's).")
    g.add_argument("--run", required=True, help="run directory (its latest checkpoint) or a checkpoint directory")
    g.add_argument("--vod", required=True, help="the video file")
    g.add_argument("--start", default="0", help="seconds or [H:]MM:SS (default 0)")
    g.add_argument("--end", default="", help="seconds or [H:]MM:SS (default: the end of the video)")
    g.add_argument("--out", default="", help="JSON [{t, user, text}] (default <vod>.chat.json)")
    g.add_argument("--irc", default="", help="also write tcd irc text here")
    g.add_argument("--ass", default="", help="also write .ass subtitles here (load as a subtitle track)")
    g.add_argument("--html", default="", help="also write a self-contained HTML replay page here")
    g.add_argument("--rate", type=float, default=0.0, help="messages per minute (default: the training chat's)")
    g.add_argument("--streamer", default="", help="rate and usernames of this streamer's training VODs only")
    add_sampling_args(g)
    g.add_argument("--max-new-tokens", type=int, default=0, help="0: the run's data.max_message_tokens")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--weights", help="'random' for both encoders (only if the run's store used random encoders)")
    g.add_argument("--video-weights", help="ResNet-50 state_dict path (default: torch hub cache)")
    g.add_argument("--audio-weights", help="VGGish state_dict path (default: torch hub cache)")
    g.add_argument("--audio-pca", help="VGGish PCA params path")
    g.add_argument("--device", default="auto")
    g.add_argument("--batch", type=int, default=32, help="stretches of the range decoded side by side")
    g.add_argument("--embed-video-mb", type=float, default=16.0, help="embed the video in the HTML page up to this size")
    g.set_defaults(fn=cmd_generate)

    lv = sub.add_parser("live", help="chat for a stream while it happens: JSON lines and an overlay page for OBS",
                        description="Follows a growing file, an HLS playlist or stdin; messages as JSON lines on "
                                    "stdout (and --out); --serve HOST:PORT serves the overlay page.")
    from vod2chat.inference.live import LiveConfig

    add_config_args(lv, LiveConfig, LIVE_HELP, required=("run", "source"))
    lv.add_argument("--weights", help="'random' for both encoders (only if the run's store used random encoders)")
    lv.set_defaults(fn=cmd_live)
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
