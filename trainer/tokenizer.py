"""Chat tokenizer: byte-level BPE (HF `tokenizers`) trained on the store's chat.

Chat is not prose: emotes (KEKW, PogChamp, :)) and usernames (@xqc_fan99) are the words that
matter, and GPT-2's pre-tokenizer regex would cut them at case, digit and punctuation
boundaries. Here a word is a run of non-whitespace with its leading space, so an emote or a
name frequent enough in the chat becomes one token. Bytes underneath mean any text (emoji,
CJK, control characters) encodes without <unk> and decodes back exactly.

    tok = ChatTokenizer.train(texts, vocab_size=4000)
    tok.save("run/tokenizer.json"); tok = ChatTokenizer.load("run/tokenizer.json")
    ids = tok.encode("KEKW that was close")   # no special tokens added
    tok.decode(ids) == "KEKW that was close"

Special tokens have fixed ids: <pad>=0 <bos>=1 <eos>=2 <sep>=3. A chat message that literally
contains "<eos>" is encoded as plain text, never as the control token. A tokenizer trained with
`streamers=[...]` also has one token per streamer (`<streamer:NAME>`, ids after the BPE
vocabulary): the trainer puts it at the start of every example (data.streamer_token), so its
learned embedding is the streamer's, and one model serves communities that share words.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>")  # ids 0..3, in this order
# A word: one optional space + non-space run; whitespace runs keep their last space for the
# next word (GPT-2's `\s+(?!\S)` trick), so the splits concatenate back to the exact text.
WORD_PATTERN = r" ?\S+|\s+(?!\S)|\s+"


def _build_tokenizer() -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        # add_prefix_space is done by ChatTokenizer itself: ByteLevel would add it to every
        # split (e.g. to a "\n" run) and break exact decoding.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    return tk


class ChatTokenizer:
    pad_id, bos_id, eos_id, sep_id = 0, 1, 2, 3

    def __init__(self, tk: Tokenizer, source: str = "<memory>"):
        for i, name in enumerate(SPECIAL_TOKENS):
            if tk.token_to_id(name) != i:
                raise ValueError(f"{source}: special token {name} has id {tk.token_to_id(name)}, expected {i}; "
                                 "this is not a ChatTokenizer file: train one with ChatTokenizer.train")
        # Not serialised by `tokenizers`, so set on every construction: chat text that spells
        # "<eos>" must stay text.
        tk.encode_special_tokens = True
        self._tk = tk

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    # Every message is encoded as " " + text so that a word has the same tokens at the start
    # of a message as in its middle ("KEKW" and "lol KEKW" share " KEKW"); decode removes it.
    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self._tk.encode(" " + text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of many texts in one call (the Rust side loops): once per segment's messages."""
        enc = self._tk.encode_batch([" " + t for t in texts], add_special_tokens=False)
        return [e.ids if t else [] for e, t in zip(enc, texts)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        text = self._tk.decode(list(ids), skip_special_tokens=skip_special)
        return text[1:] if text.startswith(" ") else text

    def streamer_id(self, streamer: str) -> int | None:
        """The id of `streamer`'s token; None for a streamer the tokenizer was not trained with."""
        return self._tk.token_to_id(streamer_token(streamer)) if streamer else None

    def id_to_token(self, i: int) -> str | None:
        return self._tk.id_to_token(i)

    def streamers(self) -> list[str]:
        """The streamers this tokenizer has a token for."""
        pre, n = streamer_token(""), len(streamer_token(""))
        return sorted(t[n - 1:-1] for t in self._tk.get_vocab(with_added_tokens=True) if t.startswith(pre[:-1]))

    def words(self, text: str) -> list[str]:
        """`text` cut as encode() cuts it before BPE: byte-level words, each with its leading space."""
        return [w for w, _ in self._tk.pre_tokenizer.pre_tokenize_str(" " + text)] if text else []

    def pieces(self, word: str) -> list[int]:
        """The ids BPE makes of one byte-level word (from words())."""
        return [t.id for t in self._tk.model.tokenize(word)]

    def grow(self, streamers: Iterable[str] = (), words: Iterable[str] = ()) -> "ChatTokenizer":
        """This tokenizer plus a token per new streamer and per byte-level word (from words()); every
        existing id keeps its token. A word becomes one token through merges appended after every
        existing one (lowest priority): a word the old merges made one token stays that token, and a
        word they leave in pieces p1..pk gets the merges (p1,p2), (p1p2,p3)... (intermediates too get ids)."""
        d = json.loads(self._tk.to_str())
        vocab, merges = d["model"]["vocab"], d["model"]["merges"]
        # `tokenizers` re-numbers added tokens after the model's vocabulary when it loads; an added
        # token that is also in the model's vocabulary keeps that id. No merge makes these strings.
        vocab.update({t["content"]: t["id"] for t in d["added_tokens"]})
        have = {tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges}
        next_id = self.vocab_size
        for w in dict.fromkeys(words):
            parts = [t.value for t in self._tk.model.tokenize(w)]
            cur = parts[0] if parts else ""
            for p in parts[1:]:
                if (cur, p) not in have:
                    merges.append([cur, p] if not merges or isinstance(merges[0], list) else f"{cur} {p}")
                    have.add((cur, p))
                if cur + p not in vocab:
                    vocab[cur + p], next_id = next_id, next_id + 1
                cur += p
        known = set(self.streamers())
        template = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s in sorted(set(streamers) - known):
            d["added_tokens"].append({"id": next_id, "content": streamer_token(s), **template})
            vocab[streamer_token(s)] = next_id
            next_id += 1
        grown = ChatTokenizer(Tokenizer.from_str(json.dumps(d)))
        moved = [i for i in range(self.vocab_size) if grown.id_to_token(i) != self.id_to_token(i)]
        if moved or grown.vocab_size != next_id:  # a `tokenizers` format change would show here, not in a model
            raise RuntimeError(f"growing the tokenizer moved ids {moved[:5]} (vocab {grown.vocab_size} != {next_id})")
        return grown

    def save(self, path: str | os.PathLike) -> None:
        """One JSON file (the `tokenizers` format), written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self._tk.to_str(pretty=True), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChatTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found: train one (ChatTokenizer.train, or leave "
                                    "tokenizer.path empty so the trainer makes one) or fix tokenizer.path")
        try:
            tk = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a tokenizers JSON file ({e}); re-save it with ChatTokenizer.save") from e
        return cls(tk, str(path))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              streamers: Iterable[str] = ()) -> "ChatTokenizer":
        """Byte-level BPE on `texts`, plus one token per streamer in `streamers`. Deterministic
        for the same texts and settings. The result may have fewer than `vocab_size` BPE tokens
        when the chat has too few frequent pairs."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                             f"{len(SPECIAL_TOKENS) + len(alphabet)} (4 special tokens + 256 bytes)")
        tk = _build_tokenizer()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                      show_progress=False)
        tk.train_from_iterator(_with_prefix_space(texts), trainer)
        # Special, so no chat text can produce them (encode_special_tokens) and decode skips them.
        tk.add_special_tokens([streamer_token(s) for s in sorted(set(streamers))])
        return cls(tk)

    def __repr__(self) -> str:
        return f"ChatTokenizer(vocab_size={self.vocab_size})"


@dataclass
class Growth:
    """What grow_for() decided, for meta.json and the log."""
    streamers: list[str]
    words: list[str]  # as text, leading space removed
    tokens_per_message: dict[str, float] = field(default_factory=dict)  # new chat: before, with the words, kept


def grow_for(tok: ChatTokenizer, streamers: Iterable[str], texts: list[str], min_count: int, max_tokens: int,
             min_gain: float) -> tuple[ChatTokenizer, Growth]:
    """The rule: new streamers always get a token. Whole words of their chat (`texts`) seen at least
    `min_count` times that the old BPE cuts into pieces are ranked by the tokens they would save
    (count x (pieces - 1)) and taken while their new ids (intermediates included) fit `max_tokens`;
    they are kept only if they cut tokens per message on `texts` by more than `min_gain`, measured."""
    counts = Counter(w for t in texts for w in tok.words(t))
    extra = {w: len(tok.pieces(w)) - 1 for w, c in counts.items() if c >= min_count}  # new ids a word needs
    ranked = sorted(((counts[w] * k, w) for w, k in extra.items() if k > 0), key=lambda x: (-x[0], x[1]))
    chosen, budget = [], max_tokens
    for _, w in ranked:
        if extra[w] <= budget:
            chosen.append(w)
            budget -= extra[w]
    n = max(1, len(texts))
    before = sum(len(x) for x in tok.encode_batch(texts)) / n if texts else 0.0
    grown = tok.grow(streamers, chosen)
    after = sum(len(x) for x in grown.encode_batch(texts)) / n if texts else 0.0
    keep = bool(chosen) and before > 0 and (before - after) / before > min_gain
    if not keep:
        grown = tok.grow(streamers, [])
    new_streamers = sorted(set(streamers) - set(tok.streamers()))
    words = [grown.decode(grown.pieces(w)) for w in chosen] if keep else []
    return grown, Growth(new_streamers, words, {"before": before, "with_words": after,
                                                "kept": after if keep else before})


def streamer_token(streamer: str) -> str:
    return f"<streamer:{streamer}>"


def _with_prefix_space(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield " " + t

