"""Generate timestamped chat for (a range of) any VOD with a trained run.

    vod2chat generate --run runs/exp1 --vod 2424877187.mkv --start 1:00:00 --end 1:10:00 \\
                      --out chat.json --irc chat.irc --ass chat.ass --html replay.html

1. The run's latest checkpoint, its tokenizer and config (trainer.checkpoint.load_run).
2. Features of the range, computed now with the encoders the run's store was made with: the
   same weights (--video-weights/--audio-weights, "random" allowed) and the fps recorded in the
   fingerprint. The encoders' fingerprints must equal the checkpoint's, or this stops, naming
   both: features of other encoders are another feature space.
3. Message times: a Poisson process at `rate` messages per minute (default: the training chat's
   own rate, messages / duration over the run's training VODs).
4. Each message sees only the video and audio before its time (trainer.data.av_window, as in
   training) and the previous generated messages as chat context. Messages are decoded in
   batches with the KV cache: the range is cut into `batch` consecutive stretches decoded side
   by side, each strictly in order, so every message but the first of a stretch sees exactly
   the messages before it (stretches are at least MIN_STRETCH messages long).
5. Users are drawn from the training chat's usernames (by how often they chat), or viewer{n}.
6. Outputs: JSON [{t, user, text}], tcd irc text (ingest.chat.write_irc), .ass subtitles and a
   self-contained HTML replay page (trainer/replay.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vod2chat.config import param, save_config
from vod2chat.ingest.config import DecodeConfig, EncoderConfig
from vod2chat.trainer import checkpoint
from vod2chat.inference.moments import chat_texts, check_streamer, draw_users, resolve_device, training_chat
from vod2chat.shards.schema import Sample
from vod2chat.trainer.sampling import SamplingConfig

log = logging.getLogger(__name__)



@dataclass
class GenerateConfig:
    run: str = param("", "a run directory (its latest checkpoint) or a checkpoint directory", required=True)
    vod: str = param("", "the video file", required=True)
    start: str = param("0", "seconds or [H:]MM:SS")
    end: str = param("", "default: the end of the video")
    out: str = param("", "JSON; default {vod stem}.chat.json next to the video")
    irc: str = param("", "tcd irc text (optional)")
    ass: str = param("", ".ass subtitles (optional)")
    html: str = param("", "replay page (optional)")
    video: str = param("", "the VOD with the generated chat beside it, as .mp4 (`vod2chat render --over`; optional)")
    rate: float = param(0.0, "messages per minute; 0: the training chat's rate", ge=0)
    streamer: str = param("", "rate and usernames from this streamer's training VODs only, and its token "
                              "(data.streamer_token)")
    sampling: SamplingConfig = param(factory=SamplingConfig, flatten=True)
    seed: int = param(0, "sampling seed", ge=0)
    # The encoders the run's store was made with (old configs: their keys at the top level).
    encoders: EncoderConfig = param(factory=EncoderConfig, flatten=True, old_flat=True)
    device: str = param("auto", "auto | cpu | cuda")
    batch: int = param(32, "stretches decoded side by side", ge=1)
    embed_video_mb: float = param(16.0, "the HTML page embeds the video when it is at most this big", ge=0)
    progress: bool = param(True, "progress bars on stderr (features, then messages)")


class OutputError(OSError):
    """Some outputs could not be written; the message names each one and why."""


# -- small pieces ----------------------------------------------------------------------------
_HMS = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def parse_time(s: str | float | int) -> float:
    """'3725', '3725.5', '1:02:05', '62:05' -> seconds."""
    if isinstance(s, (int, float)):
        return float(s)
    s = s.strip()
    m = _HMS.match(s)
    if m:
        h, mm, ss = m.groups()
        if int(mm) >= 60 and h is not None or float(ss) >= 60:
            raise ValueError(f"bad time {s!r}: minutes and seconds must be < 60")
        return int(h or 0) * 3600 + int(mm) * 60 + float(ss)
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"bad time {s!r}: use seconds (90, 90.5) or [H:]MM:SS (1:30, 1:02:05)") from None


def poisson_times(start: float, end: float, per_minute: float, rng: np.random.Generator) -> list[float]:
    """Arrival times of a Poisson process on (start, end], to the centisecond."""
    if per_minute <= 0 or end <= start:
        return []
    lam = per_minute / 60.0
    n_max = int((end - start) * lam + 10 * math.sqrt((end - start) * lam + 1) + 10)
    t = start + np.cumsum(rng.exponential(1 / lam, size=n_max))
    t = np.round(t[t <= end], 2)
    return [float(x) for x in t if start < x <= end]


# -- features ----------------------------------------------------------------------------------
def same_json(x: Any) -> Any:
    """Fingerprints as stored (JSON): tuples become lists, so live ones compare equal."""
    return json.loads(json.dumps(x, sort_keys=True))


def check_paths(cfg: GenerateConfig) -> None:
    """The video and the run exist and every output can be written where it was asked for."""
    if "://" not in cfg.vod and not Path(cfg.vod).is_file():
        raise FileNotFoundError(f"--vod {cfg.vod}: no such video file")
    if not Path(cfg.run).exists():
        raise FileNotFoundError(f"--run {cfg.run}: no such run or checkpoint directory")
    outs = {"--out": cfg.out or str(Path(cfg.vod).with_suffix(".chat.json")), "--irc": cfg.irc, "--ass": cfg.ass,
            "--html": cfg.html}
    for flag, path in outs.items():
        if path and not Path(path).resolve().parent.is_dir():
            raise FileNotFoundError(f"{flag} {path}: folder {Path(path).parent} does not exist (create it first)")


def build_encoders(cfg: EncoderConfig, meta: dict[str, Any], device: str, run: str, vod: str) -> Any:
    """The ingest encoders as the run's features were made: at the fps of its fingerprint and (with
    precision auto) in its precision. Other weights than the run's are refused, naming both."""
    from vod2chat.ingest.config import IngestConfig
    from vod2chat.ingest.features import Encoders

    want = meta.get("fingerprints")
    fps = float(want["video"].get("fps", 1.0)) if want else IngestConfig.fps
    # The run's features were computed in some precision (fp32, bf16 autocast): compute in the same one.
    tag = str(want["video"].get("precision", "auto")) if want else "auto"
    # Before any weights are looked for: a run on random-encoder features needs those same encoders,
    # and "download the ResNet-50 weights" would be the wrong advice.
    for kind, given in (("video", cfg.video_weights), ("audio", cfg.audio_weights)):
        made_with = str(((want or {}).get(kind) or {}).get("weights", ""))
        if made_with.startswith("random") and given != "random":
            raise ValueError(f"run {run} was trained on a store made with random-initialised {kind} encoders: "
                             "pass --weights random (the same encoders) to generate for it")
    precision = cfg.precision if cfg.precision != "auto" else tag.split()[0]
    enc = Encoders(dataclasses.replace(cfg, precision=precision), device, fps)
    have = same_json(enc.fingerprints())
    try:
        checkpoint.check_fingerprints(meta, have, f"(the encoders for {vod}: video_weights="
                                                  f"{cfg.video_weights}, audio_weights={cfg.audio_weights})")
    except ValueError as e:
        raise ValueError(f"{e}; for generate: pass the encoder weights the run's store was ingested with "
                         "(--video-weights/--audio-weights, or --weights random if it used random encoders).") from e
    return enc


# -- decoding ----------------------------------------------------------------------------------
def embed_with_progress(media: Any, start: float, end: float, window_s: float, enc: Any, show: bool) -> Sample:
    """embed_range, with a bar over the feature rows (video frames and audio windows)."""
    from vod2chat.ingest.features import embed_range, range_rows

    v, a, _ = range_rows(media.duration, start, end, window_s, enc.fps)
    total = (len(v) if media.video_stream is not None else 0) + (len(a) if media.audio_stream is not None else 0)
    with tqdm(total=total, unit="row", desc="generate: features", disable=not show, file=sys.stderr) as bar:
        # Decoding at ingest's defaults: throughput only, never in a fingerprint.
        return embed_range(media, start, end, window_s, enc, DecodeConfig(), progress=bar.update)


def write_outputs(cfg: GenerateConfig, msgs: list[Any], start: float, end: float) -> tuple[list[Path], list[str]]:
    """Every output asked for that can be written: one that fails (a full disk, a name the irc
    format cannot hold) is reported, and does not stop the others. -> (written, failures)."""
    from vod2chat.ingest.chat import write_irc, write_json
    from vod2chat.inference.render import render_messages
    from vod2chat.inference.replay import write_ass, write_html

    out = Path(cfg.out) if cfg.out else Path(cfg.vod).with_suffix(".chat.json")
    jobs = [("--out", out, lambda p: (write_json(msgs, p), save_config(cfg, p.with_suffix(".toml"))))]
    jobs += [("--irc", Path(cfg.irc), lambda p: write_irc(msgs, p))] if cfg.irc else []
    jobs += [("--ass", Path(cfg.ass), lambda p: write_ass(msgs, p, title=f"{Path(cfg.vod).name} (vod2chat)"))] if cfg.ass else []
    jobs += [("--html", Path(cfg.html), lambda p: write_html(msgs, p, cfg.vod, start=start,
                                                          embed_max_bytes=int(cfg.embed_video_mb * (1 << 20))))] if cfg.html else []
    jobs += [("--video", Path(cfg.video), lambda p: render_messages(msgs, p, over=cfg.vod, start=start, end=end,
                                                                     progress=False))] if cfg.video else []
    written, failed = [], []
    for flag, path, write in jobs:
        try:
            write(path)
            written.append(path)
        except (OSError, ValueError) as e:
            failed.append(f"{flag} {path}: {type(e).__name__}: {e}")
    return written, failed


# -- main ----------------------------------------------------------------------------------
def main(cfg: GenerateConfig) -> list[dict[str, Any]]:
    from vod2chat.ingest.chat import Message
    from vod2chat.ingest.media import probe

    if not cfg.run or not cfg.vod:
        raise ValueError("generate needs --run (a trained run) and --vod (a video file)")
    check_paths(cfg)  # before minutes of work, not after
    t_begin = time.perf_counter()
    device = resolve_device(cfg.device)
    model, tok, run_cfg, meta = checkpoint.load_run(cfg.run, device)
    data = run_cfg.data
    check_streamer(tok, data, cfg.streamer, cfg.run)
    enc = build_encoders(cfg.encoders, meta, str(device), cfg.run, cfg.vod)

    media = probe(cfg.vod)
    start = max(0.0, parse_time(cfg.start or "0"))
    end = min(media.duration, parse_time(cfg.end)) if cfg.end else media.duration
    if end <= start:
        raise ValueError(f"{cfg.vod}: empty range [{start:.2f}, {end:.2f}] s (the video lasts {media.duration:.2f} s)")

    rate, users = training_chat(data, cfg.streamer, cfg.rate)

    t_feat = time.perf_counter()
    sample = embed_with_progress(media, start, end, data.window_s, enc, cfg.progress)
    t_feat = time.perf_counter() - t_feat
    rng = np.random.default_rng(cfg.seed)
    times = poisson_times(start, end, rate, rng)
    names = draw_users(len(times), users, rng)
    sc = cfg.sampling.resolved(data.max_message_tokens)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t_dec = time.perf_counter()
    with tqdm(total=len(times), unit="msg", desc="generate: messages", disable=not cfg.progress, file=sys.stderr) as bar:
        texts = chat_texts(model, tok, data, sample, times, sc, cfg.batch, device, gen, cfg.streamer, bar=bar)
    t_dec = time.perf_counter() - t_dec
    msgs = [Message(t, u, x) for t, u, x in zip(times, names, texts) if x]

    written, failed = write_outputs(cfg, msgs, start, end)  # the JSON's .toml beside it: what produced the chat
    print(f"{len(msgs)} messages for {cfg.vod} [{start:.1f}, {end:.1f}] s at {rate:.1f}/min "
          f"({len(times) - len(msgs)} empty dropped); features {t_feat:.1f} s, decoding {t_dec:.1f} s "
          f"({len(times) / max(t_dec, 1e-9):.1f} messages/s), total {time.perf_counter() - t_begin:.1f} s")
    for p in written:
        print(f"  wrote {p}")
    if failed:
        raise OutputError(f"{len(failed)} of {len(failed) + len(written)} output(s) not written (the others were): "
                          + "; ".join(failed))
    return [dataclasses.asdict(m) for m in msgs]
