"""The model: causal in tokens, blind to padding, cache == full forward, NaN-free without
memory, actually uses video/audio, and can learn. Tiny configs on CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vod2chat.trainer.model import AGE_GATE_SPEED, ModelConfig, VodChatModel

TINY = ModelConfig(vocab_size=61, d_model=32, n_heads=4, n_enc_layers=1, n_dec_layers=2, d_ff=64,
                   dropout=0.1, max_len=24, video_dim=20, audio_dim=8, max_time_s=16.0)
AV = ("video", "video_time", "video_mask", "audio", "audio_time", "audio_mask")


def make_model(seed: int = 0, **overrides) -> VodChatModel:
    torch.manual_seed(seed)
    return VodChatModel(dataclasses.replace(TINY, **overrides)).eval()


def make_batch(seed: int = 0, B: int = 3, L: int = 12, video_len=(4, 6, 0), audio_len=(2, 0, 5),
               token_len=(12, 7, 9)) -> dict[str, torch.Tensor]:
    """Right-padded tokens and A/V rows of different valid lengths; padding holds garbage on
    purpose (the model must not read it). Row 1 has no audio, row 2 no video."""
    g = torch.Generator().manual_seed(seed)
    Tv, Ta = max(video_len), max(audio_len)
    b = {"tokens": torch.randint(4, TINY.vocab_size, (B, L), generator=g),
         "video": torch.randn(B, Tv, TINY.video_dim, generator=g), "video_time": torch.rand(B, Tv, generator=g) * 12,
         "audio": torch.randn(B, Ta, TINY.audio_dim, generator=g), "audio_time": torch.rand(B, Ta, generator=g) * 12,
         "video_mask": torch.arange(Tv)[None] < torch.tensor(video_len)[:, None],
         "audio_mask": torch.arange(Ta)[None] < torch.tensor(audio_len)[:, None]}
    for i, n in enumerate(token_len):
        b["tokens"][i, n:] = 0  # <pad>
    return b


def logits_of(model: VodChatModel, b: dict[str, torch.Tensor], tokens: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(b["tokens"] if tokens is None else tokens, *(b[k] for k in AV))


def future_leak(model: VodChatModel, b: dict[str, torch.Tensor], i: int) -> float:
    """Max change of the logits at positions <= i when every token after i is replaced."""
    other = b["tokens"].clone()
    other[:, i + 1:] = (other[:, i + 1:] + 1 + torch.arange(other.shape[1] - i - 1)) % TINY.vocab_size
    return (logits_of(model, b)[:, : i + 1] - logits_of(model, b, other)[:, : i + 1]).abs().max().item()


# -- causality ---------------------------------------------------------------------------
def test_logits_do_not_depend_on_later_tokens():
    model, b = make_model(), make_batch()
    for i in (0, 3, 7, 10):
        assert future_leak(model, b, i) == 0.0, f"logits at positions <= {i} changed with later tokens"


def test_logits_depend_on_earlier_tokens():
    model, b = make_model(), make_batch()
    other = b["tokens"].clone()
    other[:, 2] = (other[:, 2] + 1) % TINY.vocab_size
    diff = (logits_of(model, b) - logits_of(model, b, other)).abs().amax(dim=(0, 2))
    assert torch.all(diff[:2] == 0)
    assert torch.all(diff[2:] > 1e-4), "a token must influence every later position"


def test_causality_check_catches_a_decoder_without_causal_mask(monkeypatch):
    """The prototype's bug: self-attention without the mask. The check above must see it."""
    model, b = make_model(), make_batch()
    sdpa = F.scaled_dot_product_attention

    def no_causal_mask(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=False, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_causal_mask)
    assert future_leak(model, b, 3) > 1e-3


# -- padding and memory -----------------------------------------------------------------
def test_padded_memory_rows_are_ignored():
    model, b = make_model(), make_batch()
    vpad, apad = ~b["video_mask"], ~b["audio_mask"]
    changed = {**b, "video": b["video"].masked_fill(vpad[..., None], float("nan")),
               "audio": torch.where(apad[..., None], torch.randn_like(b["audio"]) * 100, b["audio"]),
               "video_time": b["video_time"].masked_fill(vpad, 1e6), "audio_time": b["audio_time"].masked_fill(apad, -5.0)}
    assert torch.equal(logits_of(model, changed), logits_of(model, b))


def test_extra_padding_rows_change_nothing():
    """Same examples collated with more padding (a longer example elsewhere in the batch)."""
    model, b = make_model(), make_batch()
    longer = dict(b)
    for x, t, m in (("video", "video_time", "video_mask"), ("audio", "audio_time", "audio_mask")):
        B, T = b[m].shape
        longer[x] = torch.cat([b[x], torch.randn(B, 5, b[x].shape[2])], dim=1)
        longer[t] = torch.cat([b[t], torch.rand(B, 5)], dim=1)
        longer[m] = torch.cat([b[m], torch.zeros(B, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(logits_of(model, longer), logits_of(model, b), atol=1e-5, rtol=0)


def test_no_nan_without_any_memory():
    model, b = make_model(), make_batch()
    b["video_mask"][:] = False
    b["audio_mask"][:] = False
    model.train()
    logits = model(b["tokens"], *(b[k] for k in AV))
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_null_memory_slot_is_always_valid_and_read():
    """Torch's CPU attention happens to return 0 for rows with no valid key, other kernels NaN:
    the model must not rely on either, so every row keeps one valid learned slot."""
    model, b = make_model(), make_batch()
    memory, memory_mask = model.encode(*(b[k] for k in AV))
    assert memory.shape[1] == 1 + b["video"].shape[1] + b["audio"].shape[1]
    assert memory_mask[:, 0].all() and torch.equal(memory_mask[:, 1:], torch.cat([b["video_mask"], b["audio_mask"]], 1))
    ref = logits_of(model, b)
    with torch.no_grad():
        model.null_memory.add_(torch.randn(TINY.d_model))  # not a constant: LayerNorm would remove it
    assert (logits_of(model, b) - ref).abs().max() > 1e-4


def test_zero_length_av_sequences():
    model, b = make_model(), make_batch(video_len=(0, 0, 0), audio_len=(0, 0, 0))
    assert b["video"].shape[1] == 0
    assert torch.isfinite(logits_of(model, b)).all()


def test_text_only_model_ignores_av_and_is_finite():
    model, b = make_model(use_video=False, use_audio=False), make_batch()
    assert not any(n.startswith(("video_in", "audio_in", "time_emb")) for n, _ in model.named_parameters())
    ref = logits_of(model, b)
    other = {**b, "video": torch.randn_like(b["video"]), "audio": torch.randn_like(b["audio"])}
    assert torch.isfinite(ref).all()
    assert torch.equal(logits_of(model, other), ref)


# -- the model uses what it is given -----------------------------------------------------
def test_gradients_reach_video_and_audio_projections():
    model, b = make_model(), make_batch()
    model.train()
    model(b["tokens"], *(b[k] for k in AV)).square().mean().backward()
    for p in (model.video_in.proj.weight, model.audio_in.proj.weight, model.time_emb.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_output_changes_with_video_audio_and_time():
    model, b = make_model(), make_batch()
    ref = logits_of(model, b)
    for key in ("video", "audio", "video_time"):
        other = {**b, key: b[key] + torch.rand_like(b[key]) + 0.5}
        diff = (logits_of(model, other) - ref).abs().amax(dim=(1, 2))
        valid = b[f"{key.split('_')[0]}_mask"].any(dim=1)
        assert torch.all(diff[valid] > 1e-4), f"logits do not react to {key}"
        assert torch.all(diff[~valid] == 0), f"rows without valid {key} changed"


def test_disabled_modality_is_ignored():
    model, b = make_model(use_audio=False), make_batch()
    other = {**b, "audio": torch.randn_like(b["audio"])}
    assert torch.equal(logits_of(model, other), logits_of(model, b))


# -- incremental decoding ----------------------------------------------------------------
def test_cached_decoding_matches_full_forward():
    model, b = make_model(), make_batch()
    full = logits_of(model, b)
    with torch.no_grad():
        memory, memory_mask = model.encode(*(b[k] for k in AV))
        tokens = b["tokens"]
        for chunks in ([1] * 12, [3, 2, 1, 1, 4, 1], [12]):
            out, cache, pos = [], None, 0
            for n in chunks:
                logits, cache = model.decode(tokens[:, pos: pos + n], memory, memory_mask, cache)
                out.append(logits)
                pos += n
            assert cache.length == 12
            assert (torch.cat(out, dim=1) - full).abs().max().item() < 1e-4, f"chunks {chunks}"


def test_decode_past_max_len_raises():
    model, b = make_model(), make_batch()
    memory, memory_mask = model.encode(*(b[k] for k in AV))
    _, cache = model.decode(torch.zeros(3, TINY.max_len, dtype=torch.long), memory, memory_mask)
    with pytest.raises(ValueError, match="max_len"):
        model.decode(b["tokens"][:, :1], memory, memory_mask, cache)


# -- learning ----------------------------------------------------------------------------
@pytest.mark.slow
def test_overfits_one_batch():
    model, b = make_model(dropout=0.0), make_batch(seed=1)
    model.train()
    targets = b["tokens"].roll(-1, dims=1)
    loss_mask = (b["tokens"] != 0) & (targets != 0)
    loss_mask[:, -1] = False
    opt = model.configure_optimizer(lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(40):
        logits = model(b["tokens"], *(b[k] for k in AV))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")[loss_mask.flatten()].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5  # about ln(61) at init
    assert losses[-1] < 0.3, losses[::5]


def test_param_count_and_tied_head():
    model = VodChatModel(ModelConfig(vocab_size=4000))
    assert model.head.weight is model.tok_emb.weight
    assert 5e6 < model.num_params() < 10e6  # ~7.5M: embeddings 1.0M, decoder 4.2M, encoder 1.6M, video 0.5M
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1)
    decayed, plain = (sum(p.numel() for p in g["params"]) for g in opt.param_groups)
    assert decayed + plain == model.num_params() and plain < decayed / 50


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="n_heads"):
        ModelConfig(d_model=30, n_heads=4)


def test_feature_statistics_standardise_rows_and_travel_in_the_state_dict():
    model, b = make_model(), make_batch()
    g = torch.Generator().manual_seed(1)
    scale, shift = torch.rand(TINY.video_dim, generator=g) * 4 + 1, torch.randn(TINY.video_dim, generator=g) * 20
    # Stats that match the (shifted, scaled) data give back the logits of the plain data.
    plain = logits_of(model, b)
    model.set_feature_stats({"video": (shift, scale)})
    moved = {**b, "video": b["video"] * scale + shift}
    assert torch.allclose(logits_of(model, moved), plain, atol=1e-4)
    # Dead channels are not amplified without bound: the std floor is a tenth of the live median.
    model.set_feature_stats({"video": (shift, torch.zeros(TINY.video_dim).index_fill(0, torch.tensor([0]), 1.0))})
    assert model.video_in.inv_std.max() == pytest.approx(10.0)
    model.set_feature_stats({"video": (shift, scale)})
    fresh = make_model(seed=5)
    fresh.load_state_dict(model.state_dict())  # checkpoints carry the statistics
    assert torch.equal(fresh.video_in.inv_std, model.video_in.inv_std)
    assert torch.allclose(logits_of(fresh, moved), plain, atol=1e-4)


# -- finding the moment: row differences, age gates, ALiBi in the encoder -------------------
MOMENT_FLAGS = [{"row_diff": True}, {"age_gate": True}, {"enc_alibi": True}, {"input_mlp": True},
                {"row_diff": True, "age_gate": True, "enc_alibi": True, "input_mlp": True}]


@pytest.mark.parametrize("flags", MOMENT_FLAGS, ids=lambda f: "+".join(f))
def test_moment_inputs_ignore_padding_and_decode_the_same_with_a_cache(flags):
    model, b = make_model(**flags), make_batch()
    vpad, apad = ~b["video_mask"], ~b["audio_mask"]
    changed = {**b, "video": b["video"].masked_fill(vpad[..., None], float("nan")),
               "audio": torch.where(apad[..., None], torch.randn_like(b["audio"]) * 100, b["audio"]),
               "video_time": b["video_time"].masked_fill(vpad, 1e6), "audio_time": b["audio_time"].masked_fill(apad, -5.0)}
    ref = logits_of(model, b)
    assert torch.isfinite(ref).all()
    assert torch.equal(logits_of(model, changed), ref)
    longer = dict(b)
    for x, t, m in (("video", "video_time", "video_mask"), ("audio", "audio_time", "audio_mask")):
        B = b[m].shape[0]
        longer[x] = torch.cat([b[x], torch.randn(B, 3, b[x].shape[2])], dim=1)
        longer[t] = torch.cat([b[t], torch.rand(B, 3)], dim=1)
        longer[m] = torch.cat([b[m], torch.zeros(B, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(logits_of(model, longer), ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        memory, mask = model.encode(*(b[k] for k in AV))
        full, _ = model.decode(b["tokens"][:, :6], memory, mask)
        _, cache = model.decode(b["tokens"][:, :5], memory, mask)
        step, _ = model.decode(b["tokens"][:, 5:6], memory, mask, cache)
    torch.testing.assert_close(step[:, 0], full[:, 5], atol=1e-5, rtol=0)


def test_row_differences_see_change_not_level():
    """With the plain projection silenced, only differences between consecutive rows reach the
    model: shifting all of an example's rows by one constant changes nothing, one row does."""
    model, b = make_model(row_diff=True), make_batch()
    with torch.no_grad():
        model.video_in.proj.weight.zero_()
    ref = logits_of(model, b)
    shifted = {**b, "video": b["video"] + 3.0}
    torch.testing.assert_close(logits_of(model, shifted), ref, atol=1e-4, rtol=0)
    bumped = b["video"].clone()
    bumped[0, 2] += 3.0
    assert (logits_of(model, {**b, "video": bumped})[0] - ref[0]).abs().max() > 1e-4


def test_a_shut_age_gate_hides_rows_of_that_age():
    model, b = make_model(age_gate=True), make_batch()
    with torch.no_grad():
        for inp in (model.video_in, model.audio_in):
            inp.age_gate[6:] = -1e4  # rows 6 s old or older: content gated off
    old = {k: b[f"{k}_time"] > 6.0 + 1e-3 for k in ("video", "audio")}
    other = {**b, "video": torch.where(old["video"][..., None], torch.randn_like(b["video"]) * 5, b["video"]),
             "audio": torch.where(old["audio"][..., None], torch.randn_like(b["audio"]) * 5, b["audio"])}
    assert (old["video"] & b["video_mask"]).any() and (old["audio"] & b["audio_mask"]).any()
    torch.testing.assert_close(logits_of(model, other), logits_of(model, b), atol=1e-5, rtol=0)
    young = b["video"].clone()
    young[~old["video"]] += 2.0
    assert (logits_of(model, {**b, "video": young}) - logits_of(model, b)).abs().max() > 1e-4


def test_age_gates_can_shut_within_a_short_run():
    # Rows 6 s old or older are what the loss punishes; their gates must close within a short
    # run: 150 steps at lr 2e-3 move a plain logit (speed 1) by at most 0.3, a gate to 0.85.
    model, b = make_model(age_gate=True), make_batch()
    inp = model.video_in
    for p in model.parameters():
        p.requires_grad_(p is inp.age_gate)
    opt = model.configure_optimizer(lr=2e-3, weight_decay=0.1)
    old = (b["video_time"] >= 6.0) & b["video_mask"]
    assert old.any() and (~old & b["video_mask"]).any()
    content = lambda: inp(b["video"], b["video_mask"], b["video_time"]) - inp.type_emb  # noqa: E731
    start = content()[old].detach().norm()
    for _ in range(150):
        loss = content()[old].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert content()[old].norm() < 0.3 * start, "gates at the punished ages did not shut"
    gate = 2 * torch.sigmoid(AGE_GATE_SPEED * inp.age_gate.detach())
    assert (gate[:5] == 1.0).all(), "gates of ages the loss never saw moved"


def test_age_gates_and_slopes_are_not_decayed():
    model = make_model(age_gate=True, enc_alibi=True)
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.video_in.age_gate) in no_decay and id(model.alibi_log_slope) in no_decay
    assert id(model.video_in.proj.weight) not in no_decay


def test_input_mlp_separates_rows_that_differ_only_in_magnitude():
    """Two rows along one direction, one twice the other: the encoder's LayerNorm makes them
    the same after a linear projection, not after the input MLP."""
    b = make_batch(video_len=(1, 1, 1), audio_len=(0, 0, 0))
    b["video"] = torch.ones_like(b["video"]) * torch.tensor([1.0, 2.0, 4.0])[:, None, None]
    b["video_time"] = torch.zeros_like(b["video_time"])
    for mlp in (False, True):
        model = make_model(input_mlp=mlp, n_enc_layers=0)
        with torch.no_grad():
            model.video_in.proj.bias.zero_()
            model.time_emb.proj.bias.zero_()
            model.time_emb.proj.weight.zero_()
            memory, _ = model.encode(*(b[k] for k in AV))
        spread = (memory[0, 1] - memory[1, 1]).abs().max()
        assert (spread > 1e-2) == mlp, (mlp, spread)
