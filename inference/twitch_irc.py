"""A channel's real chat, read anonymously from Twitch IRC, as context for live messages.

    --chat irc://irc.chat.twitch.tv/CHANNEL     (ircs://irc.chat.twitch.tv/CHANNEL: TLS on 6697)

Anonymous and read-only: the nick is `justinfan<digits>` (Twitch's anonymous login, no token),
it asks for the IRCv3 tags capability, joins #channel and never sends anything but PONG, CAP,
NICK and JOIN. PRIVMSG lines are parsed by the chat parser (ingest.chat), the same code that
reads recorded IRC logs. A dropped connection is reopened with a growing pause.
"""
from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque

from vod2chat.ingest.chat import irc_privmsg, parse_irc_line

log = logging.getLogger(__name__)

KEEP = 200  # recent messages kept
MAX_LINE = 8192  # IRCv3 allows 8191 bytes of tags + 512 of message; longer lines are dropped


def parse_chat_url(url: str) -> tuple[str, int, bool, str]:
    """irc[s]://host[:port]/channel -> (host, port, tls, channel)."""
    u = urllib.parse.urlsplit(url)
    channel = u.path.strip("/").lstrip("#").lower()
    if u.scheme not in ("irc", "ircs") or not u.hostname or not channel or "/" in channel:
        raise ValueError(f"--chat {url!r}: use irc://irc.chat.twitch.tv/CHANNEL (or ircs:// for TLS)")
    tls = u.scheme == "ircs"
    return u.hostname, u.port or (6697 if tls else 6667), tls, channel


class IrcChat:
    """Reads the channel in a background thread; `recent(n)` is the last n messages' texts."""

    def __init__(self, url: str, connect_timeout: float = 10.0):
        self.host, self.port, self.tls, self.channel = parse_chat_url(url)
        self.nick = f"justinfan{random.randint(10000, 99999)}"
        self.messages: deque[tuple[float, str, str]] = deque(maxlen=KEEP)  # (wall time, user, text)
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.joined = threading.Event()
        self.timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.dropped_lines = 0
        self.thread = threading.Thread(target=self._run, name="irc", daemon=True)

    @classmethod
    def start(cls, url: str) -> "IrcChat":
        c = cls(url)
        c.thread.start()
        return c

    def recent(self, n: int) -> list[str]:
        with self.lock:
            return [text for _, _, text in list(self.messages)[-n:]] if n > 0 else []

    def _send(self, line: str) -> None:
        assert self.sock is not None
        self.sock.sendall(line.encode() + b"\r\n")

    def _connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.tls:
            s = ssl.create_default_context().wrap_socket(s, server_hostname=self.host)
        s.settimeout(1.0)  # so close() is noticed
        return s

    def _run(self) -> None:
        pause = 1.0
        while not self.closed.is_set():
            try:
                self.sock = self._connect()
                self._send("CAP REQ :twitch.tv/tags twitch.tv/commands")
                self._send(f"NICK {self.nick}")
                self._send(f"JOIN #{self.channel}")
                pause = 1.0
                self._read()
            except OSError as e:
                if not self.closed.is_set():
                    log.warning("chat %s:%d: %s; reconnecting in %.0f s", self.host, self.port, e, pause)
            finally:
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
            if self.closed.wait(pause):
                break
            pause = min(pause * 2, 60.0)

    def _read(self) -> None:
        buf, dropping = b"", False  # dropping: inside a line already too long, until its newline
        while not self.closed.is_set():
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                if dropping or len(raw) > MAX_LINE:
                    self._too_long()
                    dropping = False
                    continue
                self._line(raw.decode("utf-8", "replace").rstrip("\r"))
            if len(buf) > MAX_LINE:  # no newline yet: the line is too long already, whatever follows
                dropping, buf = True, b""

    def _too_long(self) -> None:
        """A line over MAX_LINE is dropped whole (its tail never parses as a line of its own)."""
        self.dropped_lines += 1
        if self.dropped_lines in (1, 10, 100, 1000):
            log.warning("chat %s:%d: dropped %d line(s) longer than %d bytes", self.host, self.port,
                        self.dropped_lines, MAX_LINE)

    def _line(self, line: str) -> None:
        if not line:
            return
        _tags, _prefix, command, rest = parse_irc_line(line)
        if command == "PING":
            self._send(f"PONG {rest}")
        elif command == "RECONNECT":  # Twitch asks clients to move before a restart
            raise ConnectionError("the server asked to reconnect")
        elif command in ("JOIN", "ROOMSTATE") or command == "366":
            self.joined.set()
        elif command == "PRIVMSG":
            p = irc_privmsg(line)
            if isinstance(p, tuple):
                with self.lock:
                    self.messages.append((time.time(), p[1], p[2]))
            else:
                log.debug("chat: skipped %s", p)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=3.0)
