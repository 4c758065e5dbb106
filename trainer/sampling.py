"""Batched decoding with a key/value cache: greedy or sampled (temperature, top-k, top-p,
repetition penalty). Prefixes of different lengths share one batch: every row advances one
position per step, reading its own prefix token while it has one, so no padding enters the
cache and each row sees exactly what it would see alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from vod2chat.config import param
from vod2chat.trainer.batch import AV_KEYS
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.tokenizer import ChatTokenizer


@dataclass
class SamplingConfig:
    temperature: float = param(1.0, "0: greedy", ge=0)
    top_k: int = param(0, "0: off", ge=0)
    top_p: float = param(0.9, "nucleus sampling: the smallest set of tokens reaching this probability; 1: off", gt=0, le=1)
    repetition_penalty: float = param(1.0, "1: off (CTRL-style: divide positive logits, multiply negative)", gt=0)
    max_new_tokens: int = param(0, "tokens per message; 0: the run's data.max_message_tokens", ge=0)

    def resolved(self, max_message_tokens: int) -> "SamplingConfig":
        """A copy whose max_new_tokens is set (0 means the longest message the run was trained on)."""
        return dataclasses.replace(self, max_new_tokens=self.max_new_tokens or max_message_tokens)


def pick(logits: torch.Tensor, seen: torch.Tensor, sc: SamplingConfig, gen: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token [B]. `seen` [B, V] marks tokens already in each row."""
    logits = logits.float()
    if sc.repetition_penalty != 1.0:
        pen = torch.where(logits > 0, logits / sc.repetition_penalty, logits * sc.repetition_penalty)
        logits = torch.where(seen, pen, logits)
    if sc.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / sc.temperature
    if sc.top_k > 0:
        kth = logits.topk(min(sc.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sc.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > sc.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)


@torch.no_grad()
def generate(model: VodChatModel, prefixes: list[list[int]], memory: torch.Tensor, memory_mask: torch.Tensor,
             eos_id: int, sc: SamplingConfig, gen: torch.Generator | None = None) -> list[list[int]]:
    """New tokens for each prefix (without the prefix, without <eos>). The tests hold the
    reference it must equal token for token: the whole sequence re-decoded for every token."""
    if sc.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {sc.max_new_tokens}: use SamplingConfig.resolved()")
    B, device = len(prefixes), memory.device
    lens = torch.tensor([len(p) for p in prefixes], device=device)
    total = int(lens.max()) + sc.max_new_tokens
    seq = torch.zeros(B, total, dtype=torch.long, device=device)
    for b, p in enumerate(prefixes):
        seq[b, : len(p)] = torch.tensor(p, device=device)
    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    m = int(lens.min())
    logits, cache = model.decode(seq[:, :m], memory, memory_mask, None)
    for i in range(m, total):
        nxt = pick(logits[:, -1], seen, sc, gen)
        generating = i >= lens  # rows still reading their prefix keep it
        nxt = torch.where(generating & ~done, nxt, torch.where(generating, torch.full_like(nxt, eos_id), seq[:, i]))
        seq[:, i] = nxt
        seen[torch.arange(B, device=device)[generating], nxt[generating]] = True
        # Rows with shorter prefixes start earlier: each stops after its own max_new_tokens.
        done |= generating & ((nxt == eos_id) | (i + 1 - lens >= sc.max_new_tokens))
        if bool(done.all()) or i == total - 1:
            break
        logits, cache = model.decode(seq[:, i : i + 1], memory, memory_mask, cache)
    out = []
    for b in range(B):
        new = seq[b, int(lens[b]) : i + 1].tolist()
        out.append(new[: new.index(eos_id)] if eos_id in new else new)
    return out


@torch.no_grad()
def generate_batch(model: VodChatModel, batch: dict[str, Any], tok: ChatTokenizer, n: int,
                   max_new_tokens: int = 32, sc: SamplingConfig | None = None) -> tuple[list[str], list[str]]:
    """(real, generated) messages for the first n examples of a collated batch."""
    sc = sc or SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    av = {k: batch[k][:n] for k in AV_KEYS}
    memory, memory_mask = model.encode(**av)
    prefixes = [batch["tokens"][b, : int(batch["n_prefix"][b])].tolist() for b in range(n)]
    new = generate(model, prefixes, memory, memory_mask, tok.eos_id, sc)
    model.train(was_training)
    return batch["texts"][:n], [tok.decode(ids) for ids in new]
