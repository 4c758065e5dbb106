"""Decoding throughput: vod2chat's KV-cached batched decoding against the prototype's way of
decoding (the whole decoder re-run over the whole sequence for every new token), side by side
in one run on this machine.

    .venv/bin/python bench/generate.py                        # CPU, launch/base.toml's model
    .venv/bin/python bench/generate.py --d-model 256 --n-dec-layers 4 --messages 64
    .venv/bin/python bench/generate.py --device cuda --batch 128 --messages 512

Every variant generates the same messages: each a chat context of `context_messages` previous
messages (ragged prefixes, as in generation), an A/V memory of a `window_s` window (1 fps
video + 0.96 s audio rows, encoded once per batch and included in the time), greedy decoding
of exactly `max_new_tokens` tokens (<eos> is masked out so every variant does the same work).
The model is randomly initialised: speed does not depend on what it learned.

    sampling.generate      vod2chat (trainer/sampling.py)
    prototype_generate     the prototype's decoding (below: the same batched loop, no cache)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from vod2chat.config import load_config, replaced
from vod2chat.ingest.precision import machine_line
from vod2chat.trainer.config import Config
from vod2chat.trainer.model import VodChatModel
from vod2chat.trainer.sampling import SamplingConfig, generate, pick

REPO = Path(__file__).resolve().parents[1]


class NoEos(VodChatModel):
    """<eos> can never win: every message is exactly max_new_tokens long, in every variant."""

    eos_id = 2

    def decode(self, *a, **kw):
        logits, cache = super().decode(*a, **kw)
        logits[..., self.eos_id] = float("-inf")
        return logits, cache


def make_inputs(cfg: Config, n: int, vocab: int, seed: int) -> list[dict]:
    """Ragged prefixes: contexts of a third to all of data.max_context_tokens, like real chat."""
    rng = np.random.default_rng(seed)
    d = cfg.data
    out = []
    for _ in range(n):
        ctx_len = int(rng.integers(d.max_context_tokens // 3, d.max_context_tokens + 1))
        prefix = [1] + rng.integers(4, vocab, size=ctx_len).tolist() + [3]  # <bos> context <sep>
        tv, ta = int(d.window_s), int(d.window_s / 0.96)
        out.append({"prefix": prefix, "video": rng.standard_normal((tv, cfg.model.video_dim)).astype(np.float32),
                    "audio": rng.standard_normal((ta, cfg.model.audio_dim)).astype(np.float32),
                    "vt": np.arange(tv, dtype=np.float32)[::-1].copy(), "at": np.arange(ta, dtype=np.float32)[::-1] * 0.96})
    return out


@torch.no_grad()
def prototype_generate(model: VodChatModel, prefixes: list[list[int]], memory: torch.Tensor, mask: torch.Tensor,
                       sc: SamplingConfig) -> list[list[int]]:
    """The prototype's way: the whole decoder re-run over the whole sequence for every new token.
    Batched as sampling.generate batches (rows advance together, each reading its own prefix while
    it has one); <eos> never wins here (NoEos), so every row gets max_new_tokens."""
    B, device = len(prefixes), memory.device
    lens = torch.tensor([len(p) for p in prefixes], device=device)
    seq = torch.zeros(B, int(lens.max()) + sc.max_new_tokens, dtype=torch.long, device=device)
    for b, p in enumerate(prefixes):
        seq[b, : len(p)] = torch.tensor(p, device=device)
    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
    for i in range(int(lens.min()), seq.size(1)):
        nxt = pick(model.decode(seq[:, :i], memory, mask, None)[0][:, -1], seen, sc, None)
        generating = i >= lens
        seq[:, i] = torch.where(generating, nxt, seq[:, i])
        seen[torch.arange(B, device=device)[generating], nxt[generating]] = True
    return [seq[b, int(lens[b]) : int(lens[b]) + sc.max_new_tokens].tolist() for b in range(B)]


@torch.no_grad()
def run(model: VodChatModel, inputs: list[dict], batch: int, use_cache: bool, sc: SamplingConfig,
        device: torch.device) -> tuple[float, int, list[list[int]]]:
    outs: list[list[int]] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, len(inputs), batch):
        group = inputs[lo : lo + batch]
        f = lambda k: torch.from_numpy(np.stack([g[k] for g in group])).to(device)  # noqa: E731
        B = len(group)
        vm = torch.ones(B, group[0]["video"].shape[0], dtype=torch.bool, device=device)
        am = torch.ones(B, group[0]["audio"].shape[0], dtype=torch.bool, device=device)
        memory, mask = model.encode(f("video"), f("vt"), vm, f("audio"), f("at"), am)
        prefixes = [g["prefix"] for g in group]
        new = (generate(model, prefixes, memory, mask, NoEos.eos_id, sc) if use_cache
               else prototype_generate(model, prefixes, memory, mask, sc))
        outs += [x[: sc.max_new_tokens] for x in new]  # generate() lets short prefixes run on in a ragged batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, sum(len(x) for x in outs), outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "launch/base.toml"), help="model and data shapes")
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-dec-layers", type=int)
    p.add_argument("--messages", type=int, default=32, help="messages per variant")
    p.add_argument("--batch", type=int, default=32, help="the batched variants' batch size")
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: the config's data.max_message_tokens")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--uniform-prefixes", action="store_true",
                   help="every prefix as long as the longest (no ragged batches: the best case for batching)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(Config, a.config)
    sizes = {"d_model": a.d_model, "d_ff": 4 * a.d_model} if a.d_model else {}
    sizes |= {"n_dec_layers": a.n_dec_layers} if a.n_dec_layers else {}
    cfg = replaced(cfg, {f"model.{k}": v for k, v in {**sizes, "dropout": 0.0,
                                                        "vocab_size": cfg.tokenizer.vocab_size}.items()})
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    model = NoEos(cfg.model).to(device).eval()
    sc = SamplingConfig(temperature=0.0, max_new_tokens=a.max_new_tokens or cfg.data.max_message_tokens)
    inputs = make_inputs(cfg, a.messages, cfg.model.vocab_size, a.seed)
    if a.uniform_prefixes:
        n = max(len(x["prefix"]) for x in inputs)
        for x in inputs:
            x["prefix"] = x["prefix"][:1] + [5] * (n - len(x["prefix"])) + x["prefix"][1:]
    m = cfg.model
    print(f"model d_model={m.d_model} heads={m.n_heads} enc={m.n_enc_layers} dec={m.n_dec_layers} d_ff={m.d_ff} "
          f"vocab={m.vocab_size} ({model.num_params() / 1e6:.1f} M params); {a.messages} messages of {sc.max_new_tokens} "
          f"tokens after prefixes of {min(len(x['prefix']) for x in inputs)}-{max(len(x['prefix']) for x in inputs)} "
          f"tokens; memory {inputs[0]['video'].shape[0]} video + {inputs[0]['audio'].shape[0]} audio rows; "
          f"device {device}, {torch.get_num_threads()} threads\n")
    run(model, inputs[:2], 2, True, sc, device)  # warm-up (allocator, kernels)

    variants = [("prototype: full re-decode per token", False, 1), ("prototype: full re-decode per token", False, a.batch),
                ("vod2chat: KV cache", True, 1), ("vod2chat: KV cache", True, a.batch)]
    rows, outputs = [], {}
    for name, cache, batch in variants:
        secs, toks, outs = run(model, inputs, batch, cache, sc, device)
        rows.append((name, batch, secs, toks))
        outputs[(cache, batch)] = outs
        print(f"  {name}, batch {batch}: {secs:.2f} s", file=sys.stderr)
    same = all(outputs[(c, b)] == outputs[(False, 1)] for c, b in outputs)
    base = rows[0][2]
    print(machine_line("model fp32 (no autocast)", device=str(device)))
    print("| decoding | batch | messages/s | tokens/s | speed-up vs prototype, batch 1 | vs prototype, same batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, secs, toks in rows:
        same_batch = next(s for n, b, s, _ in rows if b == batch and n.startswith("prototype"))
        print(f"| {name} | {batch} | {a.messages / secs:.2f} | {toks / secs:.1f} | {base / secs:.1f}x | "
              f"{same_batch / secs:.1f}x |")
    print(f"\ngreedy outputs identical across all four variants: {same}")


if __name__ == "__main__":
    main()
