"""Byte sources a live stream arrives through: a file still being written, MPEG-TS on stdin, an HLS
playlist. Each is a read-only, non-seekable file object for PyAV (`av.open(source)`): `read(n)`
blocks until there is data, and returns b"" once the stream is over, which it is when

- the writer is gone: stdin closed, the playlist says #EXT-X-ENDLIST (`ended`);
- nothing new arrived for `stall_timeout` seconds (`stalled`): it waits, says so, then ends;
- `close()` was called (Ctrl-C).

The time spent blocked is kept (`wait_s`): what is left of the wall clock is work.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import select
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a followed file is checked for new bytes
SAY_STALL_AFTER_S = 3.0  # a quiet source is reported after this long (then ended at stall_timeout)
HTTP_TIMEOUT_S = 10.0
MAX_SEGMENT_BYTES = 256 << 20  # an HLS segment larger than this is refused: a broken or hostile server
MAX_VARIANT_HOPS = 4  # master playlists followed in a row before the chain counts as a loop
MAX_BACKOFF_S = 8.0  # the longest pause between refetches of a playlist that keeps failing
GAP_S = 1.0  # a pause in the data longer than this (and then data again) counts as one burst boundary


class ByteSource:
    """Common bookkeeping: stall detection, the 'waiting' warning, blocked time."""

    name = "source"

    def __init__(self, stall_timeout: float):
        self.stall_timeout = float(stall_timeout)
        self.ended = False  # the writer said it is done
        self.stalled = False  # nothing new for stall_timeout seconds
        self.closed = threading.Event()
        self.bytes_read = 0
        self.wait_s = 0.0
        self._last_data = time.monotonic()
        self._said_waiting = False
        # Pauses (seconds) the reader waited for data between arrivals: a writer that buffers
        # (ffmpeg to a file at a low bitrate) delivers in bursts, and live's messages come in
        # bursts with it. Only waits count: a reader busy elsewhere is not a pause of the source.
        self.gaps: list[float] = []
        self._empty_since: float | None = None

    def _got(self, data: bytes) -> bytes:
        if data:
            self.bytes_read += len(data)
            now = time.monotonic()
            if self._empty_since is not None and now - self._empty_since > GAP_S and self.bytes_read > len(data):
                self.gaps = (self.gaps + [now - self._empty_since])[-8:]
            self._empty_since = None
            self._last_data = now
            if self._said_waiting:
                log.warning("%s: data again after a pause", self.name)
                self._said_waiting = False
        return data

    def _quiet_too_long(self) -> bool:
        """Call when there is nothing to read; True once the stall timeout has passed."""
        if self.stalled:
            return True
        if self._empty_since is None:
            self._empty_since = time.monotonic()
        quiet = time.monotonic() - self._last_data
        if quiet >= min(SAY_STALL_AFTER_S, self.stall_timeout / 2) and not self._said_waiting:
            log.warning("%s: no new data for %.0f s; waiting (ends after %.0f s without data: --stall-timeout)",
                        self.name, quiet, self.stall_timeout)
            self._said_waiting = True
        if quiet >= self.stall_timeout:
            log.warning("%s: no new data for %.0f s (--stall-timeout): ending", self.name, quiet)
            self.stalled = True
        return self.stalled

    def close(self) -> None:
        self.closed.set()

    def readable(self) -> bool:
        return True


class FollowFile(ByteSource):
    """A file that another program is still writing (OBS recording, `ffmpeg -f mpegts out.ts`)."""

    def __init__(self, path: str | Path, stall_timeout: float):
        super().__init__(stall_timeout)
        self.path = Path(path)
        self.name = str(path)
        self._f = None

    def read(self, n: int = 65536) -> bytes:
        while not self.closed.is_set():
            if self._f is None and self.path.is_file():
                self._f = open(self.path, "rb")
            if self._f is not None:
                data = self._f.read(max(1, n))
                if data:
                    return self._got(data)
            if self._quiet_too_long():
                return b""
            t0 = time.monotonic()
            self.closed.wait(POLL_S)
            self.wait_s += time.monotonic() - t0
        return b""



class StdinSource(ByteSource):
    """MPEG-TS piped in (`ffmpeg ... -f mpegts - | vod2chat live --source -`)."""

    name = "stdin"

    def __init__(self, stall_timeout: float, fd: int | None = None):
        super().__init__(stall_timeout)
        self.fd = sys.stdin.fileno() if fd is None else fd

    def read(self, n: int = 65536) -> bytes:
        while not self.closed.is_set():
            t0 = time.monotonic()
            ready = select.select([self.fd], [], [], POLL_S * 4)[0]
            self.wait_s += time.monotonic() - t0
            if ready:
                data = os.read(self.fd, max(1, n))
                if not data:
                    self.ended = True
                    return b""
                return self._got(data)
            if self._quiet_too_long():
                return b""
        return b""


# -- HLS ----------------------------------------------------------------------------------------
def _fetch(url: str, limit: int) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        # A playlist is untrusted: its URIs may only name other http(s) resources, never local files.
        raise ValueError(f"refusing HLS URI {url!r}: only http:// and https:// are followed")
    req = urllib.request.Request(url, headers={"User-Agent": "vod2chat-live"})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
        data = r.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{url}: more than {limit} bytes; not an HLS playlist or segment")
    return data


def parse_playlist(text: str, base: str) -> tuple[list[tuple[int, str]], bool, float, list[str]]:
    """An HLS media playlist -> ([(sequence number, absolute segment URL)], ended, target duration,
    variant playlist URLs when it is a master playlist instead)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise ValueError(f"{base}: not an HLS playlist (no #EXTM3U on the first line)")
    seq, target, ended = 0, 2.0, False
    segments, variants = [], []
    expect_uri = expect_variant = False
    for ln in lines[1:]:
        if ln.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-TARGETDURATION:"):
            target = float(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-ENDLIST"):
            ended = True
        elif ln.startswith("#EXT-X-KEY") and "METHOD=NONE" not in ln:
            raise ValueError(f"{base}: encrypted HLS (#EXT-X-KEY) is not supported")
        elif ln.startswith("#EXT-X-MAP"):
            raise ValueError(f"{base}: fragmented-MP4 HLS (#EXT-X-MAP) is not supported; use an MPEG-TS stream")
        elif ln.startswith("#EXTINF"):
            expect_uri = True
        elif ln.startswith("#EXT-X-STREAM-INF"):
            expect_variant = True
        elif not ln.startswith("#"):
            url = urllib.parse.urljoin(base, ln)
            if expect_variant:
                variants.append(url)
            elif expect_uri:
                segments.append((seq, url))
                seq += 1
            expect_uri = expect_variant = False
    return segments, ended, target, variants


def _next_variant(url: str, masters: list[str]) -> str:
    """The variant to fetch after the master playlists `masters`; a loop is an error naming it."""
    if url in masters:
        raise ValueError(f"HLS master playlist {masters[-1]} lists {url}, which leads back to itself "
                         "(a playlist loop); give the URL of a media playlist")
    if len(masters) > MAX_VARIANT_HOPS:
        raise ValueError(f"HLS: {len(masters)} master playlists in a row ({masters[0]} ... {url}); "
                         "give the URL of a media playlist")
    return url


class HlsSource(ByteSource):
    """An HLS playlist of MPEG-TS segments (what `streamlink --stream-url` prints): polled for new
    segments, which are fetched in order and read back to back as one transport stream."""

    def __init__(self, url: str, stall_timeout: float):
        super().__init__(stall_timeout)
        self.url = self.name = url
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._buf = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._poll, name="hls", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        url, done, target, pause = self.url, -1, 2.0, 0.0
        masters: list[str] = []  # master playlists followed in a row, to catch one that lists itself
        try:
            while not self.closed.is_set():
                try:
                    segments, ended, target, variants = parse_playlist(
                        _fetch(url, 4 << 20).decode("utf-8", "replace"), url)
                    if variants:  # a master playlist: follow its first variant (streamlink picks one for us)
                        masters.append(url)
                        url = _next_variant(variants[0], masters)
                        continue
                    masters.clear()
                    pause = 0.0
                    for seq, seg in segments:
                        if seq > done and not self.closed.is_set():
                            self._put(_fetch(seg, MAX_SEGMENT_BYTES))
                            done = seq
                except (urllib.error.URLError, OSError) as e:
                    # Not there yet, or a hiccup: try again, less often each time; the reader's
                    # stall timeout ends it.
                    pause = min(max(2 * pause, 0.5), MAX_BACKOFF_S)
                    log.debug("%s: %s; retrying in %.1f s", url, e, pause)
                    ended = False
                if ended:
                    break
                self.closed.wait(max(pause, 0.1, min(target / 2, 1.0)))
        except BaseException as e:  # handed to the reader, which ends the stream with it
            self.error = e
        finally:
            self._put(None)
            if self.closed.is_set():  # the reader is gone: make room so the end marker lands
                try:
                    self._q.put_nowait(None)
                except queue.Full:
                    pass

    def _put(self, data: bytes) -> None:
        while not self.closed.is_set():
            try:
                self._q.put(data, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self, n: int = 65536) -> bytes:
        while not self._buf:
            if self.closed.is_set():
                return b""
            t0 = time.monotonic()
            try:
                item = self._q.get(timeout=POLL_S * 4)
            except queue.Empty:
                self.wait_s += time.monotonic() - t0
                if self._quiet_too_long():
                    return b""
                continue
            self.wait_s += time.monotonic() - t0
            if item is None:
                if self.error is not None:
                    log.error("%s: %s: %s", self.name, type(self.error).__name__, self.error)
                self.ended = True
                self.closed.set()
                return b""
            self._buf = item
        data, self._buf = self._buf[:n], self._buf[n:]
        return self._got(data)


def open_source(spec: str, stall_timeout: float) -> ByteSource:
    """'-' (stdin), an http(s) URL (HLS playlist) or a path (a file being written)."""
    if spec == "-":
        return StdinSource(stall_timeout)
    if re.match(r"^https?://", spec):
        return HlsSource(spec, stall_timeout)
    if "://" in spec:
        raise ValueError(f"--source {spec!r}: use a file path, an http(s):// HLS playlist URL, or - for stdin")
    return FollowFile(spec, stall_timeout)
