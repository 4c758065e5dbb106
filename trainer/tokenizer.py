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

import os
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


def streamer_token(streamer: str) -> str:
    return f"<streamer:{streamer}>"


def _with_prefix_space(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield " " + t

