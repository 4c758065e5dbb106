"""Chat for a time range: the one decode path of generate, live and eval.

Given a model and the feature rows of a range (a Sample), `chat_texts` writes one message per
time, each seeing only the video and audio before it and the chat before it, decoded in
batches with the KV cache; `new_tokens` is the batched step under it (eval samples with it too).
`training_chat` gives the message rate and usernames of the run's training chat.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from vod2chat.shards.schema import Sample, VodRecord
from vod2chat.trainer.batch import AV_KEYS, to_device
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.data import Example, av_window, build_tokens, collate
from vod2chat.trainer.sampling import SamplingConfig, generate

log = logging.getLogger(__name__)

MIN_STRETCH = 16  # messages: shorter stretches would start without context too often
USER_SHARDS = 32  # shards of training chat read for usernames (bounded: a store can be huge)


def resolve_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def check_streamer(tok: Any, data: DataConfig, streamer: str, run: str) -> None:
    """A run trained with streamer tokens writes for the streamers it has a token for: any other
    --streamer is refused (with no token its chat would silently be nobody's community)."""
    if streamer and data.streamer_token and tok.streamer_id(streamer) is None:
        raise ValueError(f"--streamer {streamer}: run {run} has no token for it; it has "
                         f"{', '.join(tok.streamers()) or 'none'}. Pick one of those, or add it: ingest its VODs "
                         f"and train --init-from {run}")


# -- the training chat: rate and usernames ------------------------------------------------
def training_chat(data: DataConfig, streamer: str, rate: float) -> tuple[float, Counter]:
    """Messages per minute (`rate`, or the training chat's own) and the training chat's usernames
    by how often they chat (none if the store cannot be read: viewer{n} then)."""
    records: list[VodRecord] = []
    if not rate:
        try:
            records = training_records(data, streamer)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the training chat's rate from store {data.store} ({e}): pass --rate") from e
    rate = rate or chat_rate(records)
    if rate <= 0:
        raise ValueError(f"no message rate: store {data.store} has no training chat for streamer "
                         f"{streamer or '(any)'}; pass --rate (messages per minute)")
    try:
        users = training_users(data, records or training_records(data, streamer))
    except (OSError, ValueError) as e:  # the store need not be reachable from here
        log.warning("no usernames from store %s (%s): using viewer{n}", data.store, e)
        users = Counter()
    return rate, users


def training_records(data: DataConfig, streamer: str) -> list[VodRecord]:
    from vod2chat.trainer.data import RunSplits

    return RunSplits(data).select("train", streamer)


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


# -- decoding ---------------------------------------------------------------------------------
def stretches(n: int, batch: int, min_len: int = MIN_STRETCH) -> list[range]:
    """n messages cut into at most `batch` consecutive stretches of at least min_len (bar one)."""
    k = max(1, min(batch, n // max(1, min_len)))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def clean_text(s: str) -> str:
    """One line of printable text: no control characters (chat has none; a byte-level model can
    write them, and they break subtitles and terminals) and no U+FFFD from split UTF-8."""
    return " ".join("".join(c for c in s if c != "\ufffd" and unicodedata.category(c) != "Cc").split())


@torch.no_grad()
def chat_texts(model: Any, tok: Any, data: DataConfig, sample: Sample, times: list[float], sc: SamplingConfig,
               batch: int, device: torch.device, gen: torch.Generator, streamer: str = "",
               history: Sequence[str] = (), min_len: int = MIN_STRETCH, bar: Any = None) -> list[str]:
    """One text per time (`bar`, a progress bar, moves by the texts done); each sees the A/V before its time (the rows of `sample`), the chat
    `history` before the range and its stretch's earlier messages (and the streamer's token, where
    the run was trained with data.streamer_token). The times are cut into at most `batch`
    consecutive stretches of at least `min_len` decoded side by side, each strictly in order."""
    texts: list[str | None] = [None] * len(times)
    parts = stretches(len(times), batch, min_len)
    for step in range(max((len(p) for p in parts), default=0)):
        rows = [(p, p[step]) for p in parts if step < len(p)]
        examples = []
        for part, i in rows:
            ctx = (list(history) + [t for t in texts[part.start : i] if t])[-data.context_messages :] \
                if data.context_messages else []
            prefix, n_prefix = build_tokens(ctx, None, tok, data, streamer)
            v, vt, a, at = av_window(sample, times[i], data.window_s)
            examples.append(Example(key=f"{sample.key}/{i}", t=times[i], video=v, video_time=vt, audio=a, audio_time=at,
                                    tokens=prefix, n_prefix=n_prefix, text="", context=ctx))
        for (_, i), ids in zip(rows, new_tokens(model, tok, examples, sc, device, gen)):
            texts[i] = clean_text(tok.decode(ids))
        if bar is not None:
            bar.update(len(rows))
    return [t or "" for t in texts]


@torch.no_grad()
def new_tokens(model: Any, tok: Any, examples: list[Example], sc: SamplingConfig, device: torch.device,
               gen: torch.Generator, prefixes: list[list[int]] | None = None) -> list[list[int]]:
    """The tokens sampled after each example's prefix (its tokens, or `prefixes`), in one batch,
    at most sc.max_new_tokens each (sampling.generate lets short prefixes run on in a ragged batch)."""
    b = to_device(collate(examples, tok.pad_id), device)
    memory, memory_mask = model.encode(*(b[k] for k in AV_KEYS))
    prefixes = prefixes if prefixes is not None else [e.tokens for e in examples]
    new = generate(model, prefixes, memory, memory_mask, tok.eos_id, sc, gen=gen)
    return [ids[: sc.max_new_tokens] for ids in new]
