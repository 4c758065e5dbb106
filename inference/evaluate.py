"""Evaluate a run on held-out VODs: perplexity, LiveBot-style ranking, ablations, diversity.

    vod2chat eval --run runs/exp1 --split test
    python -m inference.evaluate --run runs/exp1 --split test --max-moments 500

A *moment* is one example of the split: a real message at time t, its chat context and the
A/V before t. Metrics, each for every ablation of the A/V input:

- perplexity of the real messages: the training loss (trainer.batch.token_loss) on them;
- ranking (Ma et al., "LiveBot", AAAI 2019; lancopku/livebot): each moment gets up to 100
  candidate messages, the real one + the 20 most popular messages of the TRAINING split + the
  20 nearest to the moment's context chat by TF-IDF cosine + random training messages, all
  distinct. The model scores each by its log-likelihood given the same context and A/V;
  the real message's rank counts with the most likely candidate FIRST (the reference code
  sorts ascending, i.e. the least likely first: not copied) and ties count against it, so a
  model that scores everything alike gets the worst rank, not the best. Recall@1/5/10,
  mean rank and MRR, with summed and with per-token (length-normalised) scores.
- ablations, in the same run and on the same candidates: full; A/V shuffled across moments
  (every moment gets another moment's video and audio); audio only; video only; chat only.
  Masked modalities are cut with video_mask/audio_mask = False, so only the model's null
  memory slot stays;
- diversity: distinct-1/2 (over words and over tokens) of sampled messages, next to the real
  chat's of the same moments;
- where the truth is known (`--truth DIR` with the `{vod_id}.truth.json` files that
  `vod2chat synth --kind events` writes): the Bayes oracle's and the channel marginal's ranking
  metrics on the same candidates (inference/oracle.py), and the fraction of the oracle's MRR
  gain over the marginal that each ablation closes.

Candidate sets are built once per (store selection, split, seed) and saved as JSON
({store}/eval/candidates-{split}-seed{seed}-{id}.json, written atomically), then reused, so
every model is ranked on the same sets. Sets are seeded per moment, so growing max_moments
adds sets without changing the existing ones.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vod2chat.config import param, save_config
from vod2chat.inference import oracle
from vod2chat.inference.moments import new_tokens, resolve_device
from vod2chat.synth.truth import find_truths, load_truth
from vod2chat.shards.reader import ShardStream, read_chat, shard_checks, shard_urls, skip_and_record
from vod2chat.shards.schema import parse_key
from vod2chat.shards.store import Store, read_json, write_json_atomic
from vod2chat.trainer import checkpoint
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.data import Example, RunSplits, collate, sample_examples
from vod2chat.trainer.batch import AV_KEYS, token_loss, to_device
from vod2chat.trainer.model import DecodeCache, VodChatModel
from vod2chat.trainer.sampling import SamplingConfig
from vod2chat.trainer.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

ABLATIONS = ("full", "av_shuffled", "audio_only", "video_only", "chat_only")
KS = (1, 5, 10)
CANDIDATES_VERSION = 1


@dataclass
class EvalConfig:
    run: str = param("", "a run directory (its latest checkpoint) or a checkpoint directory", required=True)
    store: str = param("", "default: the run's data.store")
    split: str = param("test", "the split evaluated", choices=["train", "val", "test"])
    streamers: list[str] = param(factory=list, help="only these streamers' VODs of the split (e.g. a streamer added "
                                                    "with train --init-from); empty: the run's selection")
    candidates: int = param(100, "per moment, the real message included", ge=1)
    n_popular: int = param(20, "most popular training messages among the candidates", ge=0)
    n_tfidf: int = param(20, "training messages nearest to the context (TF-IDF)", ge=0)
    seed: int = param(0, "candidate sets, the moment subset, the A/V shuffle and sampling", ge=0)
    max_moments: int = param(1000, "moments evaluated (a seeded subset of the split); 0: all", ge=0)
    batch_size: int = param(16, "moments encoded together", ge=1)
    out: str = param("", "JSON report; default {run}/eval-{split}.json")
    candidates_file: str = param("", "default {store}/eval/candidates-{split}-seed{seed}-{id}.json")
    ablations: list[str] = param(factory=lambda: list(ABLATIONS), help=f"comma-separated, of {','.join(ABLATIONS)}")
    num_diversity_samples: int = param(200, "moments to sample a message for (0: skip diversity)", ge=0)
    sampling: SamplingConfig = param(factory=SamplingConfig, flatten=True)
    device: str = param("auto", "auto | cpu | cuda")
    progress: bool = param(True, "progress bars")
    truth: str = param("", "directory of <vod_id>.truth.json (synth --kind events): adds the Bayes oracle's metrics and the gain each ablation closes")


# -- metrics ---------------------------------------------------------------------------
def rank_of_real(scores: Sequence[float], real: int = 0) -> int:
    """1-based rank of candidate `real` when the HIGHEST score comes first. Ties count
    against it: a model that scores every candidate alike gets the worst rank."""
    s = np.asarray(scores, dtype=np.float64)
    others = np.delete(s, real)
    return 1 + int((others >= s[real]).sum())


def ranking_metrics(ranks: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    if len(r) == 0:
        return {**{f"R@{k}": float("nan") for k in ks}, "MR": float("nan"), "MRR": float("nan")}
    return {**{f"R@{k}": float((r <= k).mean()) for k in ks}, "MR": float(r.mean()), "MRR": float((1 / r).mean())}


def distinct_n(seqs: Iterable[Sequence[Any]], n: int) -> float:
    """Distinct n-grams over all n-grams of all sequences (Li et al., 2016); 0 when none."""
    grams = [tuple(s[i : i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity(texts: list[str], tok: ChatTokenizer) -> dict[str, float]:
    words = [t.split() for t in texts]
    toks = [tok.encode(t) for t in texts]
    return {"distinct1_words": distinct_n(words, 1), "distinct2_words": distinct_n(words, 2),
            "distinct1_tokens": distinct_n(toks, 1), "distinct2_tokens": distinct_n(toks, 2),
            "mean_words": float(np.mean([len(w) for w in words])) if words else 0.0,
            "unique_messages": len(set(texts)) / len(texts) if texts else 0.0}


# -- TF-IDF ----------------------------------------------------------------------------
def words_of(text: str) -> list[str]:
    return text.lower().split()


class TfidfIndex:
    """TF-IDF (raw counts x smoothed idf, rows L2-normalised) with an inverted index: a query
    only touches the postings of its own words, so millions of training messages stay cheap."""

    def __init__(self, docs: Sequence[str]):
        self.vocab: dict[str, int] = {}
        rows, cols, tf = [], [], []
        for d, text in enumerate(docs):
            for w, c in Counter(words_of(text)).items():
                rows.append(d)
                cols.append(self.vocab.setdefault(w, len(self.vocab)))
                tf.append(c)
        self.n_docs = len(docs)
        rows_a, cols_a = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        df = np.bincount(cols_a, minlength=len(self.vocab))
        self.idf = np.log((1 + self.n_docs) / (1 + df)) + 1.0
        w = np.asarray(tf, np.float64) * self.idf[cols_a]
        norms = np.sqrt(np.bincount(rows_a, w**2, minlength=self.n_docs))
        w = w / np.where(norms > 0, norms, 1)[rows_a]
        order = np.argsort(cols_a, kind="stable")  # postings grouped by word
        self.post_docs, self.post_w = rows_a[order], w[order]
        self.indptr = np.concatenate([[0], np.cumsum(df)])

    def query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        counts = Counter(w for w in words_of(text) if w in self.vocab)
        ids = np.asarray([self.vocab[w] for w in counts], np.int64)
        q = np.asarray(list(counts.values()), np.float64) * self.idf[ids] if len(ids) else np.zeros(0)
        n = np.sqrt((q**2).sum())
        return ids, q / n if n > 0 else q

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of `text` with every document."""
        out = np.zeros(self.n_docs)
        for t, qw in zip(*self.query(text)):
            lo, hi = self.indptr[t], self.indptr[t + 1]
            out[self.post_docs[lo:hi]] += qw * self.post_w[lo:hi]  # a word's postings are distinct docs
        return out

    def nearest(self, text: str, k: int) -> list[int]:
        """Up to k most similar documents (similarity > 0), most similar first; ties by index."""
        s = self.scores(text)
        hits = np.flatnonzero(s > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-s[hits], k - 1)[:k]]
        return sorted(hits.tolist(), key=lambda d: (-s[d], d))


# -- candidate sets ----------------------------------------------------------------------
@dataclass
class TextPool:
    """The training split's messages: distinct texts with counts, most frequent first."""

    texts: list[str]
    counts: np.ndarray
    tfidf: TfidfIndex

    @functools.cached_property
    def cdf(self) -> np.ndarray:
        return np.cumsum(self.counts)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Random training messages (so frequent texts are drawn more often, as in LiveBot)."""
        cdf = self.cdf
        return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").clip(max=len(self.texts) - 1)

    @classmethod
    def build(cls, texts: Iterable[str]) -> "TextPool":
        c = Counter(t.strip() for t in texts if t.strip())
        ranked = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))  # stable for equal counts
        if not ranked:
            raise ValueError("the training split has no chat messages to draw candidates from")
        texts_ = [t for t, _ in ranked]
        return cls(texts_, np.asarray([n for _, n in ranked], np.float64), TfidfIndex(texts_))


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def build_candidates(real: str, context: Sequence[str], pool: TextPool, n: int, n_popular: int, n_tfidf: int,
                     rng: np.random.Generator) -> list[str]:
    """[real, popular..., tf-idf nearest to the context..., random...], all distinct, at most n.
    Each group takes the next texts of its ranking that are not in the set yet."""
    out, seen = [real], {real}

    def take(indices: Iterable[int], quota: int) -> None:
        added = 0
        for i in indices:
            if added >= quota or len(out) >= n:
                return
            t = pool.texts[i]
            if t not in seen:
                seen.add(t)
                out.append(t)
                added += 1

    take(range(len(pool.texts)), n_popular)
    query = " ".join(context)
    if query.strip():
        # A few extra hits make up for those already in the set.
        take(pool.tfidf.nearest(query, n_tfidf + n_popular + 1), n_tfidf)
    for _ in range(20):  # bounded: a pool with few distinct texts runs dry
        if len(out) >= n:
            break
        take(pool.draw(rng, 2 * (n - len(out))), n)
    if len(out) < n:  # a small pool: take what is left, in a seeded order
        take(rng.permutation(len(pool.texts)), n)
    return out


def training_pool(splits: RunSplits, skipped: list[str] | None = None) -> TextPool:
    """The training split's messages, from shards verified against their records as training reads
    them (a changed shard is an error naming it, or with data.skip_errors a skip added to `skipped`)."""
    records = splits.require("train")
    handler = skip_and_record([] if skipped is None else skipped) if splits.cfg.skip_errors else None
    chats = read_chat(shard_urls(splits.store, records), handler, shard_checks(splits.store, records))
    return TextPool.build(m["text"] for chat in chats for m in chat["messages"])


def split_vods(splits: RunSplits, split: str) -> list[str]:
    return [r.name for r in splits.select(split)]


def candidates_id(splits: RunSplits, split: str, ec: EvalConfig) -> dict[str, Any]:
    """What a candidate file depends on: the training VODs (popular, TF-IDF, random) and the
    protocol. Another store selection is another file, never a silently different one."""
    return {"version": CANDIDATES_VERSION, "split": split, "seed": ec.seed, "candidates": ec.candidates,
            "n_popular": ec.n_popular, "n_tfidf": ec.n_tfidf, "train_vods": split_vods(splits, "train"),
            "split_vods": split_vods(splits, split)}


def default_candidates_path(store: Store, ident: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return store.full_url(f"eval/candidates-{ident['split']}-seed{ident['seed']}-{h}.json")


def load_candidates(moments: list[Example], path: str, ident: dict[str, Any],
                    make_pool: Any) -> dict[str, list[str]]:
    """Candidate sets for `moments` from the file at `path`, building (and saving) only the
    missing ones. `make_pool()` gives the TextPool; it is only called when something is missing."""
    saved = read_json(path)
    if saved is not None and saved.get("ident") != ident:
        raise ValueError(f"{path} was built for another selection or protocol:\n  {json.dumps(saved.get('ident'))[:400]}"
                         f"\nnot\n  {json.dumps(ident)[:400]}\nremove it or pass another candidates_file")
    sets: dict[str, dict[str, Any]] = saved["moments"] if saved else {}
    for m in moments:
        if m.key in sets and sets[m.key]["text"] != m.text:
            raise ValueError(f"{path}: moment {m.key} is {sets[m.key]['text']!r} there but {m.text!r} in the store: "
                             "the store changed under the candidate file; remove it to rebuild")
    missing = [m for m in moments if m.key not in sets]
    if missing:
        pool = make_pool()
        for m in missing:
            rng = np.random.default_rng(_stable_seed(ident["seed"], m.key))
            sets[m.key] = {"text": m.text, "candidates": build_candidates(
                m.text, m.context, pool, ident["candidates"], ident["n_popular"], ident["n_tfidf"], rng)}
        try:
            write_json_atomic(path, {"ident": ident, "moments": sets})
        except OSError as e:  # a read-only store still evaluates; only reuse is lost
            log.warning("could not save candidate sets to %s (%s): pass candidates_file to keep them", path, e)
    return {m.key: sets[m.key]["candidates"] for m in moments}


# -- moments -------------------------------------------------------------------------------
def select_moments(splits: RunSplits, split: str, tok: ChatTokenizer, max_moments: int,
                   seed: int, skipped: list[str] | None = None) -> list[Example]:
    """The split's examples, or a seeded subset of max_moments of them: the moments whose
    hash(seed, key) is smallest, so the subset is spread over every VOD and does not depend
    on reading order. Returned in store order. Shards are verified against their records as
    training reads them: a changed one is an error naming it, or with data.skip_errors a skip
    added to `skipped`."""
    data = splits.cfg
    records = splits.require(split)  # checks the windows the model was trained with
    keep: list[tuple[int, int, Example]] = []  # max-heap on the hash via negation
    stream = ShardStream(shard_urls(splits.store, records), shuffle_shards=False, skip_errors=data.skip_errors,
                         checks=shard_checks(splits.store, records), skipped=skipped)
    examples = (e for s in stream for e in sample_examples(s, tok, data))
    for i, e in enumerate(examples):
        h = -_stable_seed(seed, e.key)
        if not max_moments or len(keep) < max_moments:
            heapq.heappush(keep, (h, i, e))
        elif h > keep[0][0]:
            heapq.heapreplace(keep, (h, i, e))
    return [e for _, _, e in sorted(keep, key=lambda x: x[1])]


def donors(n: int, seed: int) -> np.ndarray:
    """A seeded derangement for the A/V-shuffled ablation: moment i gets moment donors[i]'s
    A/V. A random order shifted by half its length: never itself (n > 1), and rarely a
    neighbour, whose A/V window would overlap its own."""
    if n < 2:
        raise ValueError("the A/V-shuffled ablation needs at least 2 moments")
    order = np.random.default_rng(_stable_seed(seed, "donors")).permutation(n)
    out = np.empty(n, np.int64)
    out[order] = order[(np.arange(n) + n // 2) % n]
    return out


def ablated(moments: list[Example], name: str, donor: np.ndarray | None) -> list[Example]:
    if name == "av_shuffled":
        return [dataclasses.replace(e, video=moments[d].video, video_time=moments[d].video_time,
                                    audio=moments[d].audio, audio_time=moments[d].audio_time)
                for e, d in zip(moments, donor)]
    return moments


def mask_batch(batch: dict[str, Any], name: str) -> dict[str, Any]:
    """Masked modalities: no row valid, so only the null memory slot remains."""
    drop = {"audio_only": ("video_mask",), "video_only": ("audio_mask",),
            "chat_only": ("video_mask", "audio_mask")}.get(name, ())
    return {**batch, **{k: torch.zeros_like(batch[k]) for k in drop}}


# -- scoring -------------------------------------------------------------------------------
def expand_cache(cache: DecodeCache, n: int) -> DecodeCache:
    """One row's cache as n identical rows (views: nothing is copied)."""
    ex = lambda kv: (kv[0].expand(n, -1, -1, -1), kv[1].expand(n, -1, -1, -1))  # noqa: E731
    return DecodeCache([ex(kv) for kv in cache.self_kv], [ex(kv) for kv in cache.cross_kv], cache.length)


@torch.no_grad()
def score_candidates(model: VodChatModel, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: list[int],
                     candidates: list[list[int]], max_logits: int = 2**24) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of each candidate (its tokens, <eos> included) after `prefix`, for ONE
    moment: memory [1, S, D]. The prefix is decoded once and its cache shared by all
    candidates. Returns (summed log-probs [C], scored tokens [C])."""
    device = memory.device
    logits, cache = model.decode(torch.tensor([prefix], device=device), memory, memory_mask)
    first = logits[0, -1].float().log_softmax(-1)  # predicts every candidate's first token
    lens = np.asarray([len(c) for c in candidates])
    sums = np.zeros(len(candidates))
    V = logits.shape[-1]
    step = max(1, max_logits // max(1, V * int(lens.max())))  # bounds the [C, L, V] logits
    for lo in range(0, len(candidates), step):
        chunk = candidates[lo : lo + step]
        L = max(len(c) for c in chunk)
        toks = torch.zeros(len(chunk), L, dtype=torch.long, device=device)
        for i, c in enumerate(chunk):
            toks[i, : len(c)] = torch.tensor(c, device=device)
        lp = first[toks[:, 0]]
        if L > 1:
            n = len(chunk)
            out, _ = model.decode(toks[:, :-1], memory.expand(n, -1, -1), memory_mask.expand(n, -1),
                                  expand_cache(cache, n))
            tok_lp = out.float().log_softmax(-1).gather(-1, toks[:, 1:, None]).squeeze(-1)
            valid = torch.arange(L - 1, device=device)[None] < torch.tensor(lens[lo : lo + step] - 1, device=device)[:, None]
            lp = lp + (tok_lp * valid).sum(1)
        sums[lo : lo + len(chunk)] = lp.cpu().numpy()
    return sums, lens.astype(np.float64)


def candidate_tokens(texts: list[str], tok: ChatTokenizer, data: DataConfig) -> list[list[int]]:
    """Each candidate as the model would see it as the message: truncated like build_tokens."""
    return [tok.encode(t)[: data.max_message_tokens] + [tok.eos_id] for t in texts]


@torch.no_grad()
def eval_ablation(model: VodChatModel, moments: list[Example], cands: dict[str, list[list[int]]], name: str,
                  donor: np.ndarray | None, tok: ChatTokenizer, batch_size: int, device: torch.device,
                  progress: bool) -> dict[str, Any]:
    loss, n_tok = 0.0, 0
    ranks_sum, ranks_norm = [], []
    inputs = ablated(moments, name, donor)
    for lo in range(0, len(inputs), batch_size):
        group = inputs[lo : lo + batch_size]
        batch = mask_batch(to_device(collate(group, tok.pad_id), device), name)
        l, n = token_loss(model, batch)
        loss, n_tok = loss + float(l), n_tok + int(n)
        memory, memory_mask = model.encode(*(batch[k] for k in AV_KEYS))
        for b, e in enumerate(group):
            sums, lens = score_candidates(model, memory[b : b + 1], memory_mask[b : b + 1], e.tokens[: e.n_prefix],
                                          cands[e.key])
            ranks_sum.append(rank_of_real(sums))
            ranks_norm.append(rank_of_real(sums / lens))
        if progress:
            print(f"\r  {name}: {min(lo + batch_size, len(inputs))}/{len(inputs)} moments", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    mean = loss / max(1, n_tok)
    return {"loss": mean, "ppl": math.exp(min(mean, 50)), "tokens": n_tok,
            "summed": ranking_metrics(ranks_sum), "normalized": ranking_metrics(ranks_norm),
            "ranks_summed": ranks_sum}


@torch.no_grad()
def sample_messages(model: VodChatModel, moments: list[Example], tok: ChatTokenizer, sc: SamplingConfig,
                    batch_size: int, device: torch.device, seed: int) -> list[str]:
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for lo in range(0, len(moments), batch_size):
        group = moments[lo : lo + batch_size]
        new = new_tokens(model, tok, group, sc, device, gen, prefixes=[e.tokens[: e.n_prefix] for e in group])
        out += [tok.decode(ids).strip() for ids in new]
    return out


# -- main ----------------------------------------------------------------------------------
def main(cfg: EvalConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    bad = [a for a in cfg.ablations if a not in ABLATIONS]
    if bad:
        raise ValueError(f"unknown ablations {bad}: choose from {list(ABLATIONS)}")
    model, tok, run_cfg, meta = checkpoint.load_run(cfg.run, device)
    data: DataConfig = dataclasses.replace(run_cfg.data, store=cfg.store or run_cfg.data.store,
                                           streamers=cfg.streamers or run_cfg.data.streamers)
    splits = RunSplits(data)  # the store listed once
    checkpoint.check_fingerprints(meta, splits.fingerprints(), data.store)

    skipped: list[str] = []  # with data.skip_errors: what was not read, in the report
    moments = select_moments(splits, cfg.split, tok, cfg.max_moments, cfg.seed, skipped)
    ident = candidates_id(splits, cfg.split, cfg)
    cpath = cfg.candidates_file or default_candidates_path(splits.store, ident)
    sets = load_candidates(moments, cpath, ident, lambda: training_pool(splits, skipped))
    cand_tokens = {k: candidate_tokens(v, tok, data) for k, v in sets.items()}
    donor = donors(len(moments), cfg.seed) if "av_shuffled" in cfg.ablations else None

    results = {name: eval_ablation(model, moments, cand_tokens, name, donor, tok, cfg.batch_size, device, cfg.progress)
               for name in cfg.ablations}
    report: dict[str, Any] = {
        "run": cfg.run, "checkpoint": meta["checkpoint"], "step": meta.get("step"), "store": data.store,
        "split": cfg.split, "moments": len(moments), "vods": len({parse_key(e.key)[1] for e in moments}),
        "candidates_file": cpath, "mean_candidates": float(np.mean([len(v) for v in sets.values()])) if sets else 0.0,
        "ablations": {k: {kk: vv for kk, vv in v.items() if kk != "ranks_summed"} for k, v in results.items()},
        **({"skipped": skipped} if skipped else {}),
    }
    fewest = min((len(v) for v in sets.values()), default=0)
    trivial = [k for k in KS if 0 < fewest <= k]
    if trivial:  # the real message is always within the top k of k candidates
        report["warnings"] = [f"only {fewest} candidates for some moments: R@{','.join(map(str, trivial))} is 1.0 "
                              "there by construction (raise --candidates, or the split has too few distinct messages)"]
    if cfg.truth:
        report["oracle"] = oracle_report(moments, sets, results, cfg.truth)
    if cfg.num_diversity_samples:
        sub = moments[: cfg.num_diversity_samples]
        sc = cfg.sampling.resolved(data.max_message_tokens)
        fake = sample_messages(model, sub, tok, sc, cfg.batch_size, device, cfg.seed)
        report["diversity"] = {"generated": diversity(fake, tok), "real": diversity([e.text for e in sub], tok),
                               "examples": [{"real": e.text, "generated": g} for e, g in zip(sub[:10], fake)]}
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / f"eval-{cfg.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    save_config(cfg, out.with_suffix(".toml"))  # what produced the report, loadable with --config
    report["out"] = str(out)
    print(format_report(report))
    return report


def oracle_report(moments: list[Example], sets: dict[str, list[str]], results: dict[str, Any],
                  truth_dir: str) -> dict[str, Any]:
    """The oracle and the channel marginal next to every ablation, on the moments whose VOD has a
    truth file (summed log-likelihood ranks)."""
    truths = {vod: load_truth(p) for vod, p in find_truths(truth_dir).items()}
    idx = [i for i, e in enumerate(moments) if parse_key(e.key)[1] in truths]
    if not idx:
        raise ValueError(f"no truth file in {truth_dir} for any evaluated VOD: expected <vod_id>.truth.json "
                         "(written by `vod2chat synth --kind events`)")
    marginals = {vod: oracle.marginal_probs(t) for vod, t in truths.items()}
    orc, marg = [], []
    for i in idx:
        e = moments[i]
        vod = parse_key(e.key)[1]
        orc.append(oracle.rank_candidates(oracle.text_probs(truths[vod], e.t), sets[e.key]))
        marg.append(oracle.rank_candidates(marginals[vod], sets[e.key]))
    out = {"truth": truth_dir, "moments": len(idx), "oracle": oracle.mean_metrics(orc),
           "marginal": oracle.mean_metrics(marg),
           "model": {name: ranking_metrics([r["ranks_summed"][i] for i in idx]) for name, r in results.items()}}
    out["closed_mrr"] = {name: oracle.closed_fraction(m["MRR"], out["marginal"]["MRR"], out["oracle"]["MRR"])
                         for name, m in out["model"].items()}
    return out


def format_oracle(o: dict[str, Any]) -> list[str]:
    head = f"{'':<13}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MR':>7}{'MRR':>7}  {'gain closed':>11}"
    lines = ["", f"against the truth ({o['moments']} moments with a truth file; summed log-likelihood; "
                 "gain closed = (MRR - marginal) / (oracle - marginal)):", head, "-" * len(head)]
    rows = [("oracle", o["oracle"], 1.0), ("marginal", o["marginal"], 0.0)]
    rows += [(name, m, o["closed_mrr"][name]) for name, m in o["model"].items()]
    for name, m, frac in rows:
        lines.append(f"{name:<13}" + "".join(f"{m[f'R@{k}']:>7.3f}" for k in KS)
                     + f"{m['MR']:>7.2f}{m['MRR']:>7.3f}  {frac:>10.1%}")
    return lines


def format_report(r: dict[str, Any]) -> str:
    lines = [f"{r['split']}: {r['moments']} moments from {r['vods']} VOD(s), {r['mean_candidates']:.1f} candidates "
             f"each ({r['candidates_file']}); checkpoint {r['checkpoint']}", ""]
    head = f"{'':<13}{'ppl':>9} |{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MR':>7}{'MRR':>7} |" \
           f"{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MR':>7}{'MRR':>7}"
    lines += [f"{'':<23}|{'summed log-likelihood':^35}|{'per-token log-likelihood':^35}", head, "-" * len(head)]
    for name, a in r["ablations"].items():
        row = f"{name:<13}{a['ppl']:>9.2f} |"
        for kind in ("summed", "normalized"):
            m = a[kind]
            row += "".join(f"{m[f'R@{k}']:>7.3f}" for k in KS) + f"{m['MR']:>7.2f}{m['MRR']:>7.3f} |"
        lines.append(row)
    if "oracle" in r:
        lines += format_oracle(r["oracle"])
    if "diversity" in r:
        lines += ["", f"{'diversity':<13}{'dist-1 w':>10}{'dist-2 w':>10}{'dist-1 t':>10}{'dist-2 t':>10}"
                      f"{'words':>8}{'unique':>8}"]
        for who in ("generated", "real"):
            d = r["diversity"][who]
            lines.append(f"{who:<13}{d['distinct1_words']:>10.3f}{d['distinct2_words']:>10.3f}{d['distinct1_tokens']:>10.3f}"
                         f"{d['distinct2_tokens']:>10.3f}{d['mean_words']:>8.2f}{d['unique_messages']:>8.2f}")
    lines += [f"WARNING: {w}" for w in r.get("warnings", [])]
    return "\n".join(lines)
