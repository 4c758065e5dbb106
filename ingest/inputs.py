"""Input files that may live in object storage (s3://, gs://) as well as on a local disk.

On a Ray cluster the VODs cannot sit on the head's disk: a part of a VOD may run on any GPU
node. Inputs given as URLs are copied once per node into a local cache, under a name derived
from the URL, so the plan (made on one node) and its parts (run on others) agree on the path
without shipping files around. Decoders then seek in a local file, which they do far better
than over HTTP ranges.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import fsspec

log = logging.getLogger(__name__)

DEFAULT_CACHE = "~/.cache/vod2chat/inputs"


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def list_files(item: str) -> list[str]:
    """The files under a directory or prefix (recursively), or the item itself if it is a file."""
    if not is_url(item):
        p = Path(item.removeprefix("file://"))
        if p.is_dir():
            return [str(f) for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")]
        if p.is_file():
            return [str(p)]
        raise FileNotFoundError(f"input {item} does not exist")
    fs, root = fsspec.core.url_to_fs(item)
    if fs.isfile(root):
        return [item]
    if not fs.isdir(root):
        raise FileNotFoundError(f"input {item} does not exist (or the credentials cannot list it)")
    proto = item.split("://", 1)[0]
    return [f"{proto}://{f}" for f in sorted(fs.find(root)) if not Path(f).name.startswith(".")]


def localize(path: str, cache_dir: str = DEFAULT_CACHE, cache_gb: float = 100.0) -> str:
    """A local path for `path`: itself when local, else a cached copy (downloaded once per node)."""
    if not is_url(path):
        return path.removeprefix("file://")
    fs, remote = fsspec.core.url_to_fs(path)
    size = int(fs.info(remote)["size"])
    cache = Path(os.path.expanduser(cache_dir))
    local = cache / hashlib.sha256(path.encode()).hexdigest()[:16] / Path(remote).name
    if local.exists() and local.stat().st_size == size:
        os.utime(local)  # recently used: the last to be evicted
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    evict(cache, keep_bytes=int(cache_gb * 2**30) - size)
    tmp = local.with_name(f".tmp-{os.getpid()}-{local.name}")
    log.info("fetching %s (%.1f MiB) to %s", path, size / 2**20, local)
    fs.get_file(remote, str(tmp))
    if tmp.stat().st_size != size:
        tmp.unlink()
        raise OSError(f"{path}: fetched {tmp.stat().st_size} bytes of {size}")
    os.replace(tmp, local)  # concurrent fetchers on one node both end with a whole file
    return str(local)


def evict(cache: Path, keep_bytes: int) -> None:
    """Delete least recently used cached inputs until at most keep_bytes remain."""
    # Equal times (a VOD's video and chat fetched within one tick of the file system's clock) say
    # nothing about which was used last: the larger goes first, freeing the space with fewer evictions.
    files = sorted((f for f in cache.rglob("*") if f.is_file() and not f.name.startswith(".tmp-")),
                   key=lambda f: (f.stat().st_mtime_ns, -f.stat().st_size))
    total = sum(f.stat().st_size for f in files)
    for f in files:
        if total <= max(0, keep_bytes):
            break
        total -= f.stat().st_size
        f.unlink(missing_ok=True)
