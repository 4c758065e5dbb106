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
import itertools
import json
import logging
import math
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vod2chat.config import param, save_config
from vod2chat.shards.schema import Sample, VodRecord
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.data import Example, av_window, build_tokens, collate
from vod2chat.trainer.steps import AV_KEYS, to_device
from vod2chat.trainer.sampling import SamplingConfig, generate

log = logging.getLogger(__name__)

MIN_STRETCH = 16  # messages: shorter stretches would start without context too often
USER_SHARDS = 32  # shards of training chat read for usernames (bounded: a store can be huge)


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
    rate: float = param(0.0, "messages per minute; 0: the training chat's rate")
    streamer: str = param("", "rate and usernames from this streamer's training VODs only, and its token "
                              "(data.streamer_token)")
    sampling: SamplingConfig = param(factory=SamplingConfig, flatten=True)
    seed: int = param(0, "sampling seed")
    video_weights: str | None = param(None, "ResNet-50 state_dict path; 'random' (only if the run's store used random encoders); default: the torch hub cache")
    audio_weights: str | None = param(None, "VGGish state_dict path; 'random'; default: the torch hub cache")
    audio_pca: str | None = param(None, "VGGish PCA params path")
    device: str = param("auto", "auto | cpu | cuda")
    batch: int = param(32, "stretches decoded side by side")
    embed_video_mb: float = param(16.0, "the HTML page embeds the video when it is at most this big")


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


def stretches(n: int, batch: int, min_len: int = MIN_STRETCH) -> list[range]:
    """n messages cut into at most `batch` consecutive stretches of at least min_len (bar one)."""
    k = max(1, min(batch, n // max(1, min_len)))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def training_records(data: DataConfig, streamer: str) -> list[VodRecord]:
    from vod2chat.shards.reader import select_records
    from vod2chat.shards.store import Store
    from vod2chat.trainer.data import selection

    sel = selection(data, "train")
    if streamer:
        sel.streamers = [streamer]
    return select_records(Store(data.store), sel)


def chat_rate(records: list[VodRecord]) -> float:
    """Messages per minute over the records' VODs."""
    dur = sum(r.duration for r in records)
    return 60.0 * sum(r.messages for r in records) / dur if dur > 0 else 0.0


def training_users(data: DataConfig, records: list[VodRecord]) -> Counter:
    from vod2chat.shards.reader import read_chat, shard_urls
    from vod2chat.shards.store import Store

    urls = shard_urls(Store(data.store), records)[:USER_SHARDS]
    return Counter(m["user"] for chat in read_chat(urls) for m in chat["messages"] if m.get("user"))


def draw_users(n: int, users: Counter, rng: np.random.Generator) -> list[str]:
    if not users:
        return [f"viewer{i}" for i in rng.integers(1, 1000, size=n)]
    names = sorted(users)
    p = np.asarray([users[u] for u in names], np.float64)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


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


def build_encoders(cfg: GenerateConfig, meta: dict[str, Any], device: str):
    """The ingest encoders at the fps the run's features were made at; refuses other weights."""
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
            raise ValueError(f"run {cfg.run} was trained on a store made with random-initialised {kind} encoders: "
                             "pass --weights random (the same encoders) to generate for it")
    icfg = IngestConfig(video_weights=cfg.video_weights, audio_weights=cfg.audio_weights, audio_pca=cfg.audio_pca,
                        fps=fps, device=device, precision=tag.split()[0])
    enc = Encoders(icfg)
    have = same_json(enc.fingerprints())
    try:
        checkpoint.check_fingerprints(meta, have, f"(the encoders for {cfg.vod}: video_weights="
                                                  f"{cfg.video_weights}, audio_weights={cfg.audio_weights})")
    except ValueError as e:
        raise ValueError(f"{e}; for generate: pass the encoder weights the run's store was ingested with "
                         "(--video-weights/--audio-weights, or --weights random if it used random encoders).") from e
    return enc, icfg


# -- decoding ----------------------------------------------------------------------------------
def clean_text(s: str) -> str:
    """One line of printable text: no control characters (chat has none; a byte-level model can
    write them, and they break subtitles and terminals) and no U+FFFD from split UTF-8."""
    return " ".join("".join(c for c in s if c != "\ufffd" and unicodedata.category(c) != "Cc").split())


@torch.no_grad()
def generate_texts(model: Any, tok: Any, data: DataConfig, sample: Sample, times: list[float], sc: SamplingConfig,
                   batch: int, device: torch.device, gen: torch.Generator, streamer: str = "") -> list[str]:
    """One text per time; each sees the A/V before its time and its stretch's earlier messages
    (and the streamer's token, where the run was trained with data.streamer_token)."""
    texts: list[str | None] = [None] * len(times)
    parts = stretches(len(times), batch)
    for step in itertools.count():
        rows = [p[step] for p in parts if step < len(p)]
        if not rows:
            break
        examples = []
        for i in rows:
            part = next(p for p in parts if i in p)
            ctx = [t for t in texts[part.start : i] if t][-data.context_messages :] if data.context_messages else []
            prefix, n_prefix = build_tokens(ctx, None, tok, data, streamer)
            v, vt, a, at = av_window(sample, times[i], data.window_s)
            examples.append(Example(f"gen/{i}", times[i], v, vt, a, at, prefix, n_prefix, "", ctx))
        b = to_device(collate(examples, tok.pad_id), device)
        memory, memory_mask = model.encode(*(b[k] for k in AV_KEYS))
        new = generate(model, [e.tokens for e in examples], memory, memory_mask, tok.eos_id, sc, gen=gen)
        for i, ids in zip(rows, new):
            # [:max_new_tokens]: sampling.generate lets short prefixes run on in a ragged batch.
            texts[i] = clean_text(tok.decode(ids[: sc.max_new_tokens]))
    return [t or "" for t in texts]


# -- main ----------------------------------------------------------------------------------
def main(cfg: GenerateConfig) -> list[dict[str, Any]]:
    from vod2chat.ingest.chat import Message, write_irc, write_json
    from vod2chat.ingest.features import embed_range
    from vod2chat.ingest.media import probe
    from vod2chat.inference.evaluate import resolve_device
    from vod2chat.inference.replay import write_ass, write_html

    if not cfg.run or not cfg.vod:
        raise ValueError("generate needs --run (a trained run) and --vod (a video file)")
    check_paths(cfg)  # before minutes of work, not after
    t_begin = time.perf_counter()
    device = resolve_device(cfg.device)
    model, tok, run_cfg, meta = checkpoint.load_run(cfg.run, device)
    data = run_cfg.data
    enc, icfg = build_encoders(cfg, meta, str(device))

    media = probe(cfg.vod)
    start = max(0.0, parse_time(cfg.start or "0"))
    end = min(media.duration, parse_time(cfg.end)) if cfg.end else media.duration
    if end <= start:
        raise ValueError(f"{cfg.vod}: empty range [{start:.2f}, {end:.2f}] s (the video lasts {media.duration:.2f} s)")

    records: list[VodRecord] = []
    if not cfg.rate:
        try:
            records = training_records(data, cfg.streamer)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the training chat's rate from store {data.store} ({e}): pass --rate") from e
    rate = cfg.rate or chat_rate(records)
    if rate <= 0:
        raise ValueError(f"no message rate: store {data.store} has no training chat for streamer "
                         f"{cfg.streamer or '(any)'}; pass --rate (messages per minute)")
    try:
        users = training_users(data, records or training_records(data, cfg.streamer))
    except (OSError, ValueError) as e:  # the store need not be reachable from here
        log.warning("no usernames from store %s (%s): using viewer{n}", data.store, e)
        users = Counter()

    t_feat = time.perf_counter()
    sample = embed_range(media, start, end, data.window_s, enc, icfg)
    t_feat = time.perf_counter() - t_feat
    rng = np.random.default_rng(cfg.seed)
    times = poisson_times(start, end, rate, rng)
    names = draw_users(len(times), users, rng)
    sc = cfg.sampling.resolved(data.max_message_tokens)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    t_dec = time.perf_counter()
    texts = generate_texts(model, tok, data, sample, times, sc, cfg.batch, device, gen, cfg.streamer)
    t_dec = time.perf_counter() - t_dec
    msgs = [Message(t, u, x) for t, u, x in zip(times, names, texts) if x]

    out = Path(cfg.out) if cfg.out else Path(cfg.vod).with_suffix(".chat.json")
    write_json(msgs, out)
    written = [out]
    save_config(cfg, out.with_suffix(".toml"))  # what produced the chat, loadable with --config
    if cfg.irc:
        write_irc(msgs, cfg.irc)
        written.append(Path(cfg.irc))
    if cfg.ass:
        write_ass(msgs, cfg.ass, title=f"{Path(cfg.vod).name} (vod2chat)")
        written.append(Path(cfg.ass))
    if cfg.html:
        write_html(msgs, cfg.html, cfg.vod, start=start, embed_max_bytes=int(cfg.embed_video_mb * (1 << 20)))
        written.append(Path(cfg.html))
    print(f"{len(msgs)} messages for {cfg.vod} [{start:.1f}, {end:.1f}] s at {rate:.1f}/min "
          f"({len(times) - len(msgs)} empty dropped); features {t_feat:.1f} s, decoding {t_dec:.1f} s "
          f"({len(times) / max(t_dec, 1e-9):.1f} messages/s), total {time.perf_counter() - t_begin:.1f} s")
    for p in written:
        print(f"  wrote {p}")
    return [dataclasses.asdict(m) for m in msgs]
