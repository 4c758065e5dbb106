"""`vod2chat`: one thin command line over each stage's main(cfg).

Every command is a `Command` below: its config dataclass (flags, --config TOML, dotted
overrides are generated from it by launch/args.py) and a function that runs it. Adding a
command is one entry in COMMANDS and, if it prints something, one small run function. Modules
are imported only for the command being run, so `vod2chat store ls` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vod2chat import __version__
from vod2chat.config import save_config
from vod2chat.launch.args import (ArgParser, add_config_args, config_from_args, normalise_argv, parse_args,
                                  run_command)

LAUNCH = Path(__file__).resolve().parent


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    config: str  # "module:Class", the stage's config dataclass
    run: Callable[[Any], int | None]  # cfg -> exit status
    description: str = ""
    default_config: str | None = None  # a TOML under launch/ that --config defaults to
    # Flags that set several keys at once: "--weights" -> encoders.video_weights and encoders.audio_weights.
    aliases: dict[str, tuple[tuple[str, ...], str]] = field(default_factory=dict)


# -- what each command does with its config --------------------------------------------------
def run_ingest(cfg: Any) -> int:
    from vod2chat.ingest.driver import dry_run
    from vod2chat.ingest.driver import main as ingest_main

    if cfg.dry_run:
        report, ok = dry_run(cfg)
        print(report)
        return 0 if ok else 1
    summary = ingest_main(cfg)
    print(summary.table())
    _save_in_store(cfg, "ingest.toml")
    return 0 if summary.ok else 1


def _save_in_store(cfg: Any, name: str) -> None:
    """The config beside the store's records ({store}/{name}), local or an object store."""
    import fsspec
    import tomli_w

    from vod2chat.config import to_dict

    with fsspec.open(f"{cfg.store.rstrip('/')}/{name}", "w") as f:
        f.write(tomli_w.dumps(to_dict(cfg)))


def run_store(cfg: Any) -> int:
    from vod2chat.launch.tables import store_table
    from vod2chat.shards.store import Store

    store = Store(cfg.store).require()
    if cfg.action == "ls":
        print(store_table(cfg.store))
        return 0
    if cfg.action == "verify":
        rep = store.verify()
        print(f"{rep.vods} VODs, {rep.shards} shards checked; {len(rep.problems)} problems; {len(rep.orphans)} orphans")
        for p in rep.problems:
            print(f"PROBLEM {p}")
        for o in rep.orphans:
            print(f"orphan  {o}  (not in any VOD record: `vod2chat store gc` removes it)")
        return 0 if rep.ok else 1
    removed = store.gc(min_age_s=cfg.min_age, dry_run=cfg.dry_run)
    print(("would remove" if cfg.dry_run else "removed"), len(removed), "orphan file(s)")
    for r in removed:
        print(f"  {r}")
    return 0


def run_synth(cfg: Any) -> int:
    if cfg.kind == "events":
        from vod2chat.synth.events import draw_params, synthesize_events

        paths = synthesize_events(cfg.out, seed=cfg.seed, duration=cfg.duration, vod_id=cfg.vod_id or "200001",
                                  channel=cfg.channel, draw=draw_params(cfg.draw))
    else:
        from vod2chat.synth.scenes import synthesize

        paths = synthesize(cfg.out, seed=cfg.seed, duration=cfg.duration, vod_id=cfg.vod_id or "100001", fps=cfg.fps)
    save_config(cfg, Path(paths[0]).with_suffix(".synth.toml"))
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def run_download(cfg: Any) -> int:
    from vod2chat.ingest.download import main as download_main

    report = download_main(cfg)
    save_config(cfg, Path(cfg.out) / "download.toml")
    print(f"downloaded {len(report['downloaded'])}, already there {len(report['skipped'])}, failed {len(report['failed'])}")
    for f in report["failed"]:
        print(f"FAILED {f}")
    return 1 if report["failed"] else 0


def run_tokenizer(cfg: Any) -> int:
    from vod2chat.trainer.data import train_tokenizer

    tok = train_tokenizer(cfg.data, cfg.tokenizer)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(cfg.out)
    save_config(cfg, f"{cfg.out}.toml")
    print(f"{tok!r} -> {cfg.out}  (use it with tokenizer.path={cfg.out})")
    return 0


def run_train(cfg: Any) -> int:
    # The same code as `accelerate launch trainer/main.py`: trainer.main.main in this process, or
    # in Ray Train workers on a Ray cluster (--address/--num-workers).
    if cfg.ray.address or cfg.ray.num_workers:
        from vod2chat.trainer.ray_train import train_on_ray

        train_on_ray(cfg)
        return 0
    from vod2chat.trainer.main import main as train_main

    train_main(cfg)
    return 0


def run_demo(cfg: Any) -> int:
    from vod2chat.launch.demo import main as demo_main

    return demo_main(cfg)


def run_eval(cfg: Any) -> int:
    from vod2chat.inference.evaluate import main as eval_main

    eval_main(cfg)
    return 0


def run_generate(cfg: Any) -> int:
    from vod2chat.inference.generate import main as generate_main

    generate_main(cfg)
    return 0


def run_live(cfg: Any) -> int:
    from vod2chat.inference.live import main as live_main

    live_main(cfg)  # ends cleanly (0) when the source ends, stalls or is interrupted
    return 0


def run_render(cfg: Any) -> int:
    from vod2chat.inference.render import main as render_main

    render_main(cfg)
    return 0


_WEIGHTS = {"--weights": (("encoders.video_weights", "encoders.audio_weights"),
                          "'random' for random-initialised encoders (offline demos; recorded in the store)")}

COMMANDS: list[Command] = [
    Command("ingest", "VODs + chat logs -> shard store (Ray fan-out)", "vod2chat.ingest.config:IngestConfig", run_ingest,
            "Pair videos and chat logs by VOD id (2424877187.mkv + 2424877187.irc), embed them and write "
            "WebDataset shards into the store.", aliases=_WEIGHTS),
    Command("store", "inspect or clean a shard store", "vod2chat.shards.store:StoreToolConfig", run_store,
            "ls: VODs, hours, messages, shards and bytes per streamer; verify: sizes, sha256, sample counts, orphans; "
            "gc: remove orphans."),
    Command("synth", "write a synthetic stream (video + chat that reacts to it)", "vod2chat.synth.scenes:SynthConfig",
            run_synth, "Coloured scenes with tones; part of the chat names the colour or the sound 1-4 s after each "
            "change, so a model that sees and hears the stream can predict it. Deterministic per seed."),
    Command("download", "Twitch VODs + chat into a folder that ingest pairs by VOD id",
            "vod2chat.ingest.download:DownloadConfig", run_download,
            "Needs the optional extra: pip install 'vod2chat[download]'. Sub-only VODs: set TWITCH_AUTH_TOKEN. "
            "Re-runs skip complete files and resume partial ones."),
    Command("tokenizer", "train the chat tokenizer on a store's train split", "vod2chat.trainer.config:TokenizerRunConfig",
            run_tokenizer, "Byte-level BPE on the chat of the train split that a training config selects (held-out "
            "VODs never contribute). `train` builds one itself when tokenizer.path is empty; this makes one to share "
            "across runs.", default_config=str(LAUNCH / "base.toml")),
    Command("train", "train the model on a store (one process; the same code as accelerate launch trainer/main.py)",
            "vod2chat.trainer.config:Config", run_train,
            "One process, here. Several processes or machines: torchrun --nproc_per_node N trainer/main.py ... (CPU, "
            "gloo) or accelerate launch --config_file launch/accelerate/*.yaml trainer/main.py ... (GPUs). On a Ray "
            "cluster: --address auto --num-workers N (Ray Train; a failed worker restarts the group from the latest "
            "checkpoint)."),
    Command("demo", "the whole chain on synthetic streams, on a local Ray and CPU", "vod2chat.launch.demo:DemoConfig",
            run_demo, "Synthesize streams, ingest them with random-initialised encoders, train a small model, "
            "evaluate it on a held-out stream and generate chat for it (JSON, irc, .ass, HTML replay).",
            default_config=str(LAUNCH / "demo.toml")),
    Command("eval", "perplexity, LiveBot ranking, A/V ablations and diversity on held-out VODs",
            "vod2chat.inference.evaluate:EvalConfig", run_eval,
            "Evaluate a run on a split of its store (held out by VOD). Candidate sets are saved in {store}/eval/ and "
            "reused, so every model is ranked on the same sets."),
    Command("generate", "timestamped chat for a VOD: JSON, irc text, .ass subtitles, HTML replay",
            "vod2chat.inference.generate:GenerateConfig", run_generate,
            "Features are computed on the fly with the encoders the run's store was made with (their fingerprints "
            "must match the checkpoint's).", aliases=_WEIGHTS),
    Command("live", "chat for a stream while it happens: JSON lines, and an overlay page for OBS",
            "vod2chat.inference.live:LiveConfig", run_live,
            "Follows a video file still being written, an HLS playlist URL, or MPEG-TS on stdin (--source -). "
            "Messages are JSON lines on stdout (and --out); --serve 127.0.0.1:PORT serves the overlay page; "
            "--chat irc://irc.chat.twitch.tv/CHANNEL reads the channel's chat as context.", aliases=_WEIGHTS),
    Command("render", "a chat log as video: a column with alpha (.webm/.mov), on a chroma key (.mp4), or beside/over the VOD",
            "vod2chat.inference.render:RenderConfig", run_render,
            "Any chat log vod2chat reads (or what `generate` wrote), drawn as Twitch shows it: names in their "
            "colours, new messages at the bottom, embedded emotes of a TwitchDownloader JSON (-E) in place of their "
            "names. --over VOD: the VOD with the chat beside it (--layout over: over its right side), audio kept.",
            default_config=str(LAUNCH / "render.toml")),
]


def add_command_args(p: argparse.ArgumentParser, c: Command) -> None:
    add_config_args(p, _load(c.config), c.default_config)
    for flag, (keys, help_text) in c.aliases.items():
        p.add_argument(flag, dest=f"alias:{','.join(keys)}", default=argparse.SUPPRESS, metavar="VALUE",
                       help=f"{help_text} (sets {', '.join(keys)})")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. Only the command named in argv gets its flags (its modules are imported
    to read its config); with argv None every command gets them."""
    p = ArgParser(prog="vod2chat", description="Learn what a stream's chat says from what it shows and sounds like.")
    p.add_argument("--version", action="version", version=f"vod2chat {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=ArgParser)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for c in COMMANDS:
        s = sub.add_parser(c.name, help=c.help, description=c.description or c.help)
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        s.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        s.set_defaults(_command=c)
        if argv is None or chosen == c.name:
            add_command_args(s, c)
    return p


def config_of(a: argparse.Namespace) -> Any:
    for key, value in list(vars(a).items()):
        if key.startswith("alias:"):
            a._set = [f"{k}={value}" for k in key[6:].split(",")] + list(a._set)
    return config_from_args(a)


def main(argv: list[str] | None = None) -> int:
    argv = normalise_argv(sys.argv[1:] if argv is None else list(argv))
    a = parse_args(build_parser(argv), argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    c: Command = a._command
    return run_command(f"vod2chat {c.name}", lambda: c.run(config_of(a)), debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())
