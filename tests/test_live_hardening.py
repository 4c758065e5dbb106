"""Hostile network inputs to `live` (issue 18): an HLS master playlist that lists itself, idle
sockets held open on the overlay, an IRC line over 8 KB, and a source that arrives in bursts.
Real loopback servers and sockets, real files; no model needed."""
from __future__ import annotations

import fcntl
import functools
import http.server
import socket
import termios
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from vod2chat.inference.live import burst_warning
from vod2chat.inference.overlay import Overlay
from vod2chat.inference.sources import FollowFile, HlsSource
from vod2chat.inference.twitch_irc import MAX_LINE, IrcChat


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        super().do_GET()


@pytest.mark.parametrize("chain", [["master.m3u8"], ["a.m3u8", "b.m3u8"]])
def test_a_master_playlist_loop_is_an_error_naming_it_not_a_busy_loop(tmp_path: Path, chain: list[str]):
    for name, nxt in zip(chain, chain[1:] + chain[:1]):  # each lists the next; the last lists the first
        (tmp_path / name).write_text(f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n{nxt}\n")
    CountingHandler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(CountingHandler, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{chain[0]}"
    try:
        src = HlsSource(url, stall_timeout=5.0)
        assert src.read(1 << 16) == b"" and src.bytes_read == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert isinstance(src.error, ValueError) and "playlist loop" in str(src.error) and url in str(src.error)
    assert len(CountingHandler.hits) == len(chain)  # each fetched once, then the loop is seen


def test_idle_sockets_on_the_overlay_are_bounded_and_time_out():
    overlay = Overlay("127.0.0.1", 0, max_connections=8, idle_timeout=2.0)
    overlay.thread.start()
    before, peak, done = threading.active_count(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], threading.active_count())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    idle = [socket.create_connection(("127.0.0.1", overlay.port)) for _ in range(40)]  # never send a byte
    try:
        # Each idle socket is either refused at once (past the bound) or closed by the server when
        # its timeout passes: every one of them ends with EOF from the server's side.
        for s in idle:
            s.settimeout(60)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        done.set()
        sampler.join()
        assert peak[0] <= before + 1 + 8, (before, peak)  # the sampler, and at most 8 handlers
        assert overlay.httpd.refused >= 1
        # The page is served again once the idle ones are gone.
        assert b"vod2chat live" in urllib.request.urlopen(overlay.url, timeout=30).read()
    finally:
        done.set()
        for s in idle:
            s.close()
        overlay.close(drain_s=0.1)


def test_an_irc_line_over_8k_is_dropped_whole_never_split():
    chat = IrcChat("irc://127.0.0.1/chan")
    mine, theirs = socket.socketpair()
    mine.settimeout(1.0)
    chat.sock = mine
    reader = threading.Thread(target=lambda: pytest.raises(ConnectionError, chat._read), daemon=True)
    reader.start()

    def send_and_wait_read(data: bytes) -> None:
        theirs.sendall(data)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the reader has taken it all in
            pending = fcntl.ioctl(mine.fileno(), termios.FIONREAD, b"\0\0\0\0")
            if int.from_bytes(pending, "little") == 0:
                break
            time.sleep(0.01)
        time.sleep(0.05)

    injected = b"@display-name=Evil;tmi-sent-ts=1700000000000 :evil!e@e PRIVMSG #chan :injected\r\n"
    good = b"@display-name=Good;tmi-sent-ts=1700000001000 :good!g@g PRIVMSG #chan :hello\r\n"
    # The first 9 KB of a line arrive (no newline yet), then its tail, which on its own looks like a message.
    send_and_wait_read(b"@badge-info=" + b"x" * (MAX_LINE + 800) + b" ")
    send_and_wait_read(injected)
    send_and_wait_read(good)
    theirs.close()
    reader.join(30)
    assert [text for _, _, text in chat.messages] == ["hello"]
    assert chat.dropped_lines == 1
    mine.close()


def test_a_source_that_arrives_in_bursts_is_warned_about(tmp_path: Path):
    path = tmp_path / "rec.ts"
    path.write_bytes(b"")
    src = FollowFile(path, stall_timeout=30.0)

    def write_in_bursts() -> None:
        for _ in range(4):
            with path.open("ab") as f:
                f.write(b"\x47" * 188 * 100)
            time.sleep(2.5)  # ffmpeg's buffer fills up between flushes at a low bitrate

    th = threading.Thread(target=write_in_bursts, daemon=True)
    th.start()
    got = 0
    while got < 4 * 188 * 100:
        got += len(src.read(1 << 20))
    th.join()
    assert len(src.gaps) == 3 and min(src.gaps) >= 2.0
    warning = burst_warning(src, rate=240.0)  # four messages a second, a burst every ~2.5 s
    assert warning and "-flush_packets 1" in warning and str(path) in warning
    assert burst_warning(src, rate=2.0) is None  # a message every 30 s: bursts do not matter
    steady = FollowFile(path, stall_timeout=30.0)
    assert steady.read(1 << 20) and burst_warning(steady, rate=240.0) is None
