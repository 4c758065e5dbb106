"""vod2chat: learn what a live stream's chat says from what the stream shows and sounds like.

The repository root is the `vod2chat` package: `ingest/`, `shards/`, `trainer/`, `inference/` and
`launch/` are its subpackages (`vod2chat.ingest`, ...), so nothing installs a generic top-level
module. Dependencies point one way: launch -> inference -> trainer/ingest -> shards; `config` is
a leaf every stage may use.
"""

__version__ = "0.2.0"
