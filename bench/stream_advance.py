"""A training reader's state n batches further on, without decoding features or tokenizing.

The positions, draws and shuffle buffer are the real stream's (tests/test_scale.py checks it), at
a fraction of the cost: bench/train.py uses it for a real state far into a run.
"""

from __future__ import annotations

import json
from typing import Any

from vod2chat.trainer import stream
from vod2chat.trainer.config import DataConfig
from vod2chat.trainer.tokenizer import ChatTokenizer


class DryReader(stream.Reader):
    """The training reader with examples as bare (shard, sample, message) references."""

    def _decode(self, raw: dict[str, Any], s: int, p: int, first: int) -> list[Any]:
        n = len(json.loads(raw["chat.json"])["messages"])  # the same positions and counts as the real stream
        return [(s, p, i) for i in range(first, n)]

    @staticmethod
    def _ref(e: Any) -> tuple[int, int, int]:
        return e

    def _collate(self, batch: list[Any]) -> None:
        return None


def advance(shards: list[stream.PinnedShard], tok: ChatTokenizer, cfg: DataConfig, micro_batch: int, seed: int,
            state: dict[str, Any], n_batches: int) -> dict[str, Any]:
    """A reader's state n_batches further on, without decoding features or tokenizing: the
    positions, draws and buffer are the same as the real stream's (tested), at a fraction of
    the cost. For benchmarks that need a real state far into a run."""
    it = DryReader(stream.TrainStream(shards, tok, cfg, micro_batch, seed, [state]), state).batches()
    st = state
    for _ in range(n_batches):
        st = next(it)[1].value
    return json.loads(json.dumps(st))  # as a checkpoint stores it
