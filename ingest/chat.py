"""Chat logs in the formats people actually have, read into one shape: Message(t, user, text).

t is seconds from VOD start. One entry point, `parse_chat`, detects the format from the file's
content (gzip by magic bytes, JSON by structure, text by what its lines look like), runs that
format's reader and applies one policy to every format:

- a malformed line/record is skipped and recorded as Skip(path, line, reason); `line` is the
  1-based line number for text files and the 0-based index into the record list for JSON;
- non-message events (IRC CLEARCHAT/USERNOTICE/..., chat-downloader bans) are not messages
  and not malformed: they are only counted (ChatLog.events);
- if more than `max_bad_fraction` of the candidate lines are malformed, or nothing parses,
  ChatFormatError names the file, the format and the first bad line;
- text is stripped of surrounding whitespace (so write_irc -> parse_chat round-trips), and
  an action (IRC \\x01ACTION, v5 is_action) becomes "/me " + text in every format, as the
  chatter typed it; a tcd-irc line "/me waves" is kept verbatim, so it means the same;
- t is rounded to the millisecond, Twitch's own resolution;
- messages are sorted by t, stably (raw IRC logs are not in time order).

Formats (the names ChatLog.format and `fmt=` use):
  tcd-irc          `[H:MM:SS] <user> text`, `[H:MM:SS.ff] <user> text` (tcd, vodus, write_irc)
  irc-tags         raw Twitch IRC with IRCv3 tags, as lines or {"messages": [...]} (recent-messages);
                   t = tmi-sent-ts - stream_start (unix seconds; default: the earliest message)
  ass              tcd .ass/.ssa subtitles: `Dialogue: ...,{\\c&H..&}user{\\c&HFFFFFF&}: text`
  v5-rechat        Twitch v5 / TwitchDownloader {"comments": [{content_offset_seconds, ...}]}
  twitch-dl        twitch-dl `chat json`: GraphQL comment nodes (contentOffsetSeconds, fragments)
  chat-downloader  chat-downloader JSON list [{author, message, time_in_seconds}, ...]
  chat-downloader-jsonl / chat-downloader-csv
                   the same records, one JSON object per line / flattened to CSV columns (author.name, ...)
  twitchdownloader-txt
                   TwitchDownloader text: `[h:mm:ss] Name: text` (hours go past 24), or
                   `[yyyy-MM-dd HH:mm:ss(.fff) UTC] Name: text` (t = time - stream_start, default the
                   first message, as for irc-tags; the summary says so). A line without a timestamp
                   continues the message above (message bodies may hold newlines). The export
                   without timestamps is refused: it has no time to align with the video.
  twitchdownloader-html
                   TwitchDownloader HTML: one `<pre class="comment-root">[h:mm:ss] ...` per message
                   (UTF-16 as TwitchDownloader writes it, or UTF-8), read with html.parser, nothing run.
                   Its stamps drop whole days (TwitchDownloader formats h:mm:ss of the offset's TimeSpan).
stream_start only matters for irc-tags and UTC text: every other format already stores VOD offsets.
"""
from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from vod2chat.ingest.errors import NotRetryable

log = logging.getLogger(__name__)

CHAT_SUFFIXES: tuple[str, ...] = (".txt", ".irc", ".log", ".json", ".gz", ".ass", ".ssa", ".jsonl", ".csv", ".html",
                                  ".htm")


@dataclass(frozen=True)
class Message:
    t: float  # seconds from VOD start
    user: str
    text: str


@dataclass(frozen=True)
class Skip:
    path: str
    line: int  # 1-based line (text formats) or 0-based record index (JSON formats)
    reason: str


@dataclass
class ChatLog:
    messages: list[Message]
    format: str
    path: str
    skipped: list[Skip] = field(default_factory=list)
    events: int = 0  # non-message records (CLEARCHAT, USERNOTICE, ...), ignored on purpose
    note: str = ""  # how times were made, when the file does not say it (UTC stamps without --stream-start)
    truncated: int = 0  # messages cut to parse_chat's max_chars (or a user name to MAX_USER_CHARS)

    def summary(self) -> str:
        s = f"{self.format}: {len(self.messages)} messages, {len(self.skipped)} skipped"
        if self.skipped:
            shown = ", ".join(f"{Path(k.path).name}:{k.line} {k.reason}" for k in self.skipped[:3])
            s += f" ({shown}{', ...' if len(self.skipped) > 3 else ''})"
        if self.events:
            s += f", {self.events} non-message events ignored"
        if self.truncated:
            s += f", {self.truncated} over-long messages truncated"
        if self.note:
            s += f"; {self.note}"
        return s


class ChatFormatError(NotRetryable, ValueError):
    """A chat log that cannot be read; the message names the file."""


# A reader turns the loaded file (str for text, decoded JSON otherwise) into (location, item)
# pairs, item being a Message, a str (why the record is malformed) or None (a non-message event).
Item = tuple[int, "Message | str | None"]
Reader = Callable[[Any, "float | None"], Iterator[Item]]


def _clip(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def _lines(text: str) -> list[tuple[int, str]]:
    """Non-empty (1-based number, line). Split on \\n only: str.splitlines would also split
    on U+2028 and friends inside a message and shift every later line number."""
    return [(no, ln.rstrip("\r")) for no, ln in enumerate(text.split("\n"), 1) if ln.strip()]


def _clean(text: str) -> str:
    return text.replace("\U000e0000", "").strip()  # chatterino/7tv anti-duplicate suffix


# -- tcd irc text ----------------------------------------------------------------------
_TCD = re.compile(r"\[([^\]]*)\] <([^>]*)> ?(.*)")
_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})(?:\.(\d+))?")


def _hms(stamp: str) -> float | None:
    """H:MM:SS(.frac) -> seconds, via one decimal string so the float equals the JSON-parsed one."""
    m = _TIME.fullmatch(stamp.strip())
    if not m or int(m[2]) >= 60 or int(m[3]) >= 60:
        return None
    return float(f"{int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])}.{m[4] or 0}")


def _read_tcd(text: str, stream_start: float | None) -> Iterator[Item]:
    for no, line in _lines(text):
        m = _TCD.fullmatch(line.strip())
        if not m:
            yield no, f"not '[H:MM:SS] <user> text': {_clip(line)}"
            continue
        t, user, body = _hms(m[1]), m[2].strip(), _clean(m[3])
        if t is None:
            yield no, f"bad timestamp '[{m[1]}]'"
        elif not user or not body:
            yield no, "empty user or text"
        else:
            yield no, Message(t, user, body)


# -- raw Twitch IRC with IRCv3 tags -------------------------------------------------------
_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def _unescape_tag(v: str) -> str:
    # IRCv3: \: \s \\ \r \n; any other escaped char is itself; a lone trailing \ is dropped.
    return re.sub(r"\\(.?)", lambda m: _TAG_ESCAPES.get(m[1], m[1]), v)


def _parse_irc(line: str) -> tuple[dict[str, str], str, str, str]:
    """One IRC line -> (tags, prefix, COMMAND, the rest after the command)."""
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line[1:].partition(" ")
        for kv in raw.split(";"):
            k, _, v = kv.partition("=")
            tags[k] = _unescape_tag(v)
    line = line.lstrip(" ")
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    command, _, rest = line.lstrip(" ").partition(" ")
    return tags, prefix, command.upper(), rest


def _irc_privmsg(line: str) -> tuple[float, str, str] | str | None:
    """-> (unix seconds, user, text), a malformed reason, or None for a non-PRIVMSG event."""
    tags, prefix, command, rest = _parse_irc(line.rstrip("\r\n"))
    if not command:
        return f"no IRC command: {_clip(line)}"
    if command != "PRIVMSG":
        return None
    # The text is everything after the channel; a one-word text may come without its ':'.
    _chan, _, text = rest.partition(" ")
    text = text[1:] if text.startswith(":") else text
    ts = tags.get("tmi-sent-ts", "")
    if not ts.isdigit():
        return "PRIVMSG without a tmi-sent-ts tag (offsets come from it)"
    user = tags.get("display-name", "").strip() or prefix.split("!", 1)[0]
    if text.startswith("\x01ACTION"):
        text = "/me " + text[len("\x01ACTION"):].replace("\x01", "").strip()
    if not user or not _clean(text):
        return "PRIVMSG with empty user or text"
    return int(ts) / 1000, user, _clean(text)


def _read_irc_tags(payload: Any, stream_start: float | None) -> Iterator[Item]:
    if isinstance(payload, str):
        lines = _lines(payload)
    else:
        recs = payload["messages"] if isinstance(payload, dict) else payload
        lines = list(enumerate(recs))
    parsed = [(no, _irc_privmsg(ln) if isinstance(ln, str) else "not a string") for no, ln in lines]
    stamps = [p[0] for _, p in parsed if isinstance(p, tuple)]
    start = stream_start if stream_start is not None else min(stamps, default=0.0)
    for no, p in parsed:
        if isinstance(p, tuple):
            yield no, Message(p[0] - start, p[1], p[2])
        else:
            yield no, p


# -- .ass subtitles -----------------------------------------------------------------------
_ASS_FIELDS = ["layer", "start", "end", "style", "name", "marginl", "marginr", "marginv", "effect", "text"]


def _read_ass(text: str, stream_start: float | None) -> Iterator[Item]:
    fields = _ASS_FIELDS
    for no, line in _lines(text):
        key, sep, rest = line.partition(":")
        key = key.strip().lower()
        if key == "format" and "text" in rest.lower():  # the [Events] Format line sets the order
            fields = [f.strip().lower() for f in rest.split(",")]
            continue
        if key != "dialogue" or not sep:
            continue  # headers, styles, Comment: lines
        row = dict(zip(fields, (v.strip() for v in rest.split(",", len(fields) - 1))))
        if "text" not in row:
            yield no, f"Dialogue with fewer than {len(fields)} fields: {_clip(line)}"
            continue
        t = _hms(row["start"])
        if t is None:
            yield no, f"bad start time {row['start']!r}"
            continue
        body = re.sub(r"\{[^}]*\}", "", row["text"])
        body = re.sub(r"\\[Nnh]", " ", body)
        user = row.get("name", "")
        if not user:
            user, sep, body = body.partition(": ")
            if not sep:
                yield no, f"no 'user: text' in {_clip(row['text'])}"
                continue
        if not user.strip() or not _clean(body):
            yield no, "empty user or text"
            continue
        yield no, Message(t, user.strip(), _clean(body))


# -- JSON formats ---------------------------------------------------------------------------
def _comments(payload: Any) -> list:
    return payload["comments"] if isinstance(payload, dict) else payload


def _read_v5(payload: Any, stream_start: float | None) -> Iterator[Item]:
    for i, c in enumerate(_comments(payload)):
        try:
            t = float(c["content_offset_seconds"])
            who = c.get("commenter") or {}
            user = who.get("display_name") or who.get("name") or ""
            msg = c["message"]
            body = msg.get("body")
            if body is None:
                body = "".join(f.get("text") or "" for f in msg.get("fragments") or [])
            if msg.get("is_action"):
                body = "/me " + body
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            yield i, f"bad v5 comment ({type(e).__name__}: {e})"
            continue
        yield i, Message(t, user, _clean(body)) if user and _clean(body) else "empty user or text"


def _read_twitch_dl(payload: Any, stream_start: float | None) -> Iterator[Item]:
    for i, c in enumerate(_comments(payload)):
        c = c.get("node", c) if isinstance(c, dict) else c  # raw GraphQL edges carry {"node": ...}
        try:
            t = float(c["contentOffsetSeconds"])
            # Deleted accounts come back with commenter null: the message is still real chat.
            who = c.get("commenter") or {}
            user = who.get("displayName") or who.get("login") or "unknown"
            body = "".join(f.get("text") or "" for f in c["message"]["fragments"] or [])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            yield i, f"bad twitch-dl comment ({type(e).__name__}: {e})"
            continue
        yield i, Message(t, user, _clean(body)) if _clean(body) else "empty text"


def _read_chat_downloader(payload: Any, stream_start: float | None) -> Iterator[Item]:
    for i, c in enumerate(payload):
        if not isinstance(c, dict):
            yield i, "not a JSON object"
            continue
        if "message" not in c:
            yield i, None  # bans, deletions, viewer counts: events without text
            continue
        a = c.get("author")
        user = str(a if isinstance(a, str) else (a or {}).get("display_name") or (a or {}).get("name") or "")
        try:
            t = float(c["time_in_seconds"])
        except (KeyError, TypeError, ValueError):
            yield i, "no numeric time_in_seconds (a live log without VOD offsets?)"
            continue
        text = _clean(str(c.get("message") or ""))
        yield i, Message(t, user.strip(), text) if user.strip() and text else "empty author or message"


def _read_vod2chat(payload: Any, stream_start: float | None) -> Iterator[Item]:
    """What `vod2chat generate` writes (write_json): [{"t", "user", "text"}, ...]."""
    for i, c in enumerate(payload):
        if not isinstance(c, dict):
            yield i, "not a JSON object"
            continue
        try:
            t = float(c["t"])
        except (KeyError, TypeError, ValueError):
            yield i, "no numeric t"
            continue
        user, text = str(c.get("user") or "").strip(), _clean(str(c.get("text") or ""))
        yield i, Message(t, user, text) if user and text else "empty user or text"


# -- chat-downloader JSON lines and CSV ---------------------------------------------------------
def _jsonl_records(text: str) -> Iterator[tuple[int, Any]]:
    for no, line in _lines(text):
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError as e:
            yield no, f"invalid JSON ({e.msg} at column {e.colno})"


def _read_chat_downloader_jsonl(text: str, stream_start: float | None) -> Iterator[Item]:
    for no, rec in _jsonl_records(text):
        if isinstance(rec, str):
            yield no, rec
            continue
        yield no, next(iter(_read_chat_downloader([rec], stream_start)))[1]


def _read_chat_downloader_csv(text: str, stream_start: float | None) -> Iterator[Item]:
    """chat-downloader's CSV writer flattens each record with '.' between keys (author.name,
    author.display_name, ...) and leaves missing values empty."""
    rows = csv.DictReader(text.splitlines(keepends=True))
    for row in rows:
        no = rows.line_num
        if None in row:
            yield no, f"more fields than the header's {len(rows.fieldnames or [])}"
            continue
        get = lambda k: (row.get(k) or "").strip()  # noqa: E731
        if not get("message"):
            kind = get("message_type") or get("action_type")
            yield no, None if kind and kind != "text_message" else "empty message"
            continue
        rec = {"message": row["message"], "time_in_seconds": get("time_in_seconds") or None,
               "author": {"display_name": get("author.display_name"), "name": get("author.name") or get("author")}}
        yield no, next(iter(_read_chat_downloader([rec], stream_start)))[1]


# -- TwitchDownloader text -------------------------------------------------------------------------
_TD_STAMP = re.compile(r"\[(?:(\d+:\d{1,2}:\d{1,2})|(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,7})?) UTC)\]")
_TD_LINE = re.compile(_TD_STAMP.pattern + r" (?P<user>[^:]+?): ?(?P<text>.*)")
_STAMPISH = re.compile(r"\[[\d:.\- ]*(?:UTC)?\]")  # looks like a stamp, so it is not message text
_UNTIMED = re.compile(r"[^\s\[<@:#][^:]{0,40}: \S.*")  # `Name: text`, the export without timestamps


def _utc(stamp: str) -> float | None:
    try:
        fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
        return datetime.strptime(stamp, fmt).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _td_text_rows(text: str) -> Iterator[tuple[int, "tuple[float, bool, str, str] | str"]]:
    """(line, (seconds, is_utc, user, text) or why it is malformed); continuation lines are
    folded into the message above them."""
    pending: list | None = None
    for no, line in _lines(text):
        m = _TD_LINE.match(line)
        if not m:
            if pending is not None and not _STAMPISH.match(line):
                pending[1][3] += "\n" + line
            else:
                yield no, f"not '[h:mm:ss] Name: text': {_clip(line)}"
            continue
        if pending is not None:
            yield pending[0], tuple(pending[1])
            pending = None
        t = _hms(m[1]) if m[1] else _utc(m[2])
        if t is None:
            yield no, f"bad timestamp '[{m[1] or m[2] + ' UTC'}]'"
            continue
        pending = [no, [t, m[1] is None, m["user"].strip(), m["text"]]]
    if pending is not None:
        yield pending[0], tuple(pending[1])


def _read_td_text(text: str, stream_start: float | None) -> Iterator[Item]:
    rows = list(_td_text_rows(text))
    utc = [r[0] for _, r in rows if isinstance(r, tuple) and r[1]]
    start = stream_start if stream_start is not None else min(utc, default=0.0)
    for no, r in rows:
        if isinstance(r, str):
            yield no, r
            continue
        t, is_utc, user, body = r
        body = _clean(body)
        yield no, Message(t - start if is_utc else t, user, body) if user and body else "empty user or text"


# -- TwitchDownloader HTML -------------------------------------------------------------------------
class _TdHtml(HTMLParser):
    """Collects one record per <pre class="comment-root">: the text before the author (the
    stamp, maybe inside a link), the author (with its colour) and the message text. Badge names
    (invisible text beside badge images) sit before the author and are ignored; emote names
    inside the message are its text, as the chatter typed them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.records: list[dict[str, Any]] = []
        self.rec: dict[str, Any] | None = None
        self.region = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "pre" and "comment-root" in classes:
            self.rec = {"line": self.getpos()[0], "head": "", "user": "", "color": None, "text": ""}
            self.region = "head"
        elif self.rec is not None and tag == "span" and "comment-author" in classes:
            self.region = "user"
            m = re.search(r"color:\s*(#[0-9a-fA-F]{6})\b", a.get("style") or "")
            self.rec["color"] = m[1] if m else None
        elif self.rec is not None and tag == "span" and "comment-message" in classes:
            self.region = "text"
        elif self.rec is not None and tag == "div" and "invis-text" in classes and self.region == "head":
            self.region = "badge"

    def handle_endtag(self, tag: str) -> None:
        if self.rec is None:
            return
        if tag == "pre":
            self.records.append(self.rec)
            self.rec, self.region = None, ""
        elif tag == "div" and self.region == "badge":
            self.region = "head"
        elif tag == "span" and self.region == "user":
            self.region = "after-user"

    def handle_data(self, data: str) -> None:
        if self.rec is not None and self.region in ("head", "user", "text"):
            self.rec[self.region] += data


def td_html_records(text: str) -> list[dict[str, Any]]:
    """The raw records of a TwitchDownloader HTML export (line, head, user, color, text)."""
    p = _TdHtml()
    p.feed(text)
    p.close()
    return p.records


def _read_td_html(text: str, stream_start: float | None) -> Iterator[Item]:
    for r in td_html_records(text):
        m = re.search(r"\[\s*(\d+:\d{1,2}:\d{1,2})\s*\]", r["head"])
        t = _hms(m[1]) if m else None
        body = " ".join(r["text"].split())
        body = _clean(body[1:] if body.startswith(":") else body)  # the ': ' after the name, once
        user = " ".join(r["user"].split())
        if t is None:
            yield r["line"], f"comment without a [h:mm:ss] stamp: {_clip(' '.join(r['head'].split()))}"
        else:
            yield r["line"], Message(t, user, body) if user and body else "empty user or text"


READERS: dict[str, Reader] = {
    "tcd-irc": _read_tcd,
    "irc-tags": _read_irc_tags,
    "ass": _read_ass,
    "v5-rechat": _read_v5,
    "twitch-dl": _read_twitch_dl,
    "chat-downloader": _read_chat_downloader,
    "vod2chat": _read_vod2chat,
    "twitchdownloader-txt": _read_td_text,
    "twitchdownloader-html": _read_td_html,
    "chat-downloader-jsonl": _read_chat_downloader_jsonl,
    "chat-downloader-csv": _read_chat_downloader_csv,
}
TEXT_FORMATS = ("tcd-irc", "irc-tags", "ass", "twitchdownloader-txt", "twitchdownloader-html", "chat-downloader-jsonl",
                "chat-downloader-csv")


# -- loading and detection -----------------------------------------------------------------
# Bounded reading, whatever the file says about itself. A chat log is read as a stream (gzip too),
# so a small file that inflates to gigabytes stops at `max_bytes` instead of filling memory, and
# a text log is read line by line so one 100 MB line is cut to MAX_LINE_BYTES before any copy of
# it is made. Both happen before the format is known: every format goes through here.
MAX_MESSAGE_CHARS = 500  # Twitch's own limit on a chat message; longer ones are cut (parse_chat)
MAX_USER_CHARS = 64  # Twitch logins and display names are at most 25 characters
MAX_LINE_BYTES = 64 << 10  # a text line: Twitch IRC's 8 KiB of tags + 500 characters, with room to spare
_CHUNK = 1 << 20


class ChatTooLargeError(ChatFormatError):
    """A chat log that inflates past its size cap (a gzip bomb, or the log of another, longer video)."""


def _open_raw(path: Path) -> Any:
    f = path.open("rb")
    if f.peek(2)[:2] == b"\x1f\x8b":  # gzip by magic bytes, whatever the suffix
        return gzip.GzipFile(fileobj=f, mode="rb")
    return f


def _looks_like_json(head: bytes) -> bool:
    """JSON starts with '{' or '[' + a value; tcd-irc text starts with '[0:00:01]'."""
    s = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return s[:1] == b"{" or (s[:1] == b"[" and s[1:].lstrip()[:1] in (b"{", b"[", b'"', b"]", b""))


def _read_bounded(path: Path, max_bytes: int | None) -> bytes:
    """The (decompressed) bytes of a chat log, at most max_bytes of them; text lines are cut at
    MAX_LINE_BYTES (the rest of such a line is read past, never kept)."""
    cap = max_bytes if max_bytes is not None else float("inf")
    seen, out = 0, []

    def count(n: int) -> None:
        nonlocal seen
        seen += n
        if seen > cap:
            raise ChatTooLargeError(
                f"{path}: chat log inflates past {cap / 2**20:.1f} MiB (its size cap for this VOD: "
                "ingest's chat_max_mb + chat_max_kb_per_s per second of video); a gzip bomb, or the chat of "
                "another, longer video? Raise --chat-max-kb-per-s if it really is this VOD's chat")

    try:
        with _open_raw(path) as f:
            head = f.peek(4096)[:4096] if hasattr(f, "peek") else b""
            if _looks_like_json(head):
                while chunk := f.read(_CHUNK):
                    count(len(chunk))
                    out.append(chunk)
                return b"".join(out)
            while line := f.readline(MAX_LINE_BYTES + 1):
                count(len(line))
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    out.append(line[:MAX_LINE_BYTES] + b"\n")
                    while (rest := f.readline(_CHUNK)):  # past the rest of the line, counted, not kept
                        count(len(rest))
                        if rest.endswith(b"\n"):
                            break
                else:
                    out.append(line)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ChatFormatError(f"{path}: gzip data is corrupt ({e}); re-download the chat log") from e
    return b"".join(out)


def _load(path: Path, max_bytes: int | None = None) -> Any:
    """File -> str (text) or decoded JSON."""
    raw = _read_bounded(path, max_bytes)
    # One bad byte should not cost a whole VOD's chat: undecodable bytes become U+FFFD.
    # TwitchDownloader writes its HTML as UTF-16 with a byte order mark.
    utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    text = raw.decode("utf-16" if utf16 else "utf-8-sig", errors="replace")
    del raw
    if text.lstrip()[:1] not in ("{", "["):
        return text
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        if _vote(text)[0] or not _JSONISH.match(text):
            return text  # tcd-irc, .ass, TwitchDownloader text and JSON lines start with '[' or '{' too
        raise ChatFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    return text if _is_cd_record(payload) else payload  # a JSON-lines file of one line


# What a JSON document's first line looks like ('{"', '[{', '[' alone, ...), so that only such a
# file gets "invalid JSON"; '[0:00:05] Alice: hi' or '[note]' is text that did not match a format.
_JSONISH = re.compile(r"\s*[\[{]\s*([\"{\[\]}]|$)", re.M)


def _is_cd_record(rec: Any) -> bool:
    return isinstance(rec, dict) and ("time_in_seconds" in rec or "message_type" in rec or "action_type" in rec)


def _first(seq: Any) -> Any:
    return next((x for x in seq if x is not None), None) if isinstance(seq, list) else None


def _detect(payload: Any, path: Path) -> str:
    if isinstance(payload, str):
        return _detect_text(payload, path)
    if isinstance(payload, dict) and isinstance(payload.get("messages"), list):
        return "irc-tags"
    first = _first(payload.get("comments") if isinstance(payload, dict) else payload)
    if isinstance(first, dict):
        node = first.get("node", first)
        if "content_offset_seconds" in first:
            return "v5-rechat"
        if isinstance(node, dict) and "contentOffsetSeconds" in node:
            return "twitch-dl"
        if "time_in_seconds" in first or {"author", "message"} <= first.keys():
            return "chat-downloader"
        if {"t", "user", "text"} <= first.keys():
            return "vod2chat"
    if isinstance(first, str) and " PRIVMSG " in first:
        return "irc-tags"
    raise ChatFormatError(
        f"{path}: JSON is not a known chat layout (tried v5-rechat {{comments:[{{content_offset_seconds}}]}}, "
        f"twitch-dl {{comments:[{{contentOffsetSeconds}}]}}, chat-downloader [{{author, message, "
        f"time_in_seconds}}], irc-tags {{messages:[...]}}, vod2chat [{{t, user, text}}]); an empty comment list "
        "has no chat to read"
    )


def _vote(text: str) -> tuple[str | None, list[tuple[int, str]]]:
    """Vote over the first 200 non-empty lines: a few odd lines must not flip the format."""
    lines = _lines(text)[:200]
    if 'class="comment-root"' in text:  # the HTML head (styles, embedded emotes) may be long
        return "twitchdownloader-html", lines
    header = next(csv.reader([lines[0][1]]), []) if lines else []
    if {"message", "time_in_seconds"} <= set(header):
        return "chat-downloader-csv", lines
    votes = dict.fromkeys(TEXT_FORMATS, 0)
    for _, ln in lines:
        s = ln.strip()
        m = _TCD.fullmatch(s)
        if m and _hms(m[1]) is not None:
            votes["tcd-irc"] += 1
        elif " PRIVMSG " in s and s[0] in "@:":
            votes["irc-tags"] += 1
        elif s.lower().startswith(("dialogue:", "[script info]", "[events]")):
            votes["ass"] += 1
        elif _TD_LINE.match(s):
            votes["twitchdownloader-txt"] += 1
        elif s.startswith("{") and _is_cd_record(_json_or_none(s)):
            votes["chat-downloader-jsonl"] += 1
    best = max(votes, key=votes.__getitem__)
    return (best if votes[best] else None), lines


def _json_or_none(s: str) -> Any:
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return None


def _detect_text(text: str, path: Path) -> str:
    best, lines = _vote(text)
    if best:
        return best
    no, ln = lines[0] if lines else (0, "")
    untimed = sum(bool(_UNTIMED.fullmatch(s.strip())) for _, s in lines)
    if lines and untimed > len(lines) / 2:
        raise ChatFormatError(
            f"{path}: looks like a TwitchDownloader text export without timestamps ('Name: text', line {no}: "
            f"{_clip(ln)}): it has no times to align with the video; export it again with timestamps "
            "(Relative or UTC) or as JSON")
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        raise ChatFormatError(f"{path}: an HTML page without TwitchDownloader's <pre class=\"comment-root\"> "
                              "messages; not a chat export vod2chat reads")
    raise ChatFormatError(
        f"{path}: not a chat log: tried {', '.join(TEXT_FORMATS)} and the JSON layouts, and no line matches "
        f"(first line {no}: {_clip(ln)}); expected e.g. '[0:01:02] <user> text' or '[0:01:02] user: text'"
    )


def detect_format(path: str | Path, max_bytes: int | None = None) -> str:
    """The format name parse_chat would use for this file (reads the file, at most max_bytes)."""
    path = Path(path)
    return _detect(_load(path, max_bytes), path)


# -- entry points ---------------------------------------------------------------------------
def parse_chat(
    path: str | Path, fmt: str | None = None, stream_start: float | None = None, max_bad_fraction: float = 0.5,
    max_chars: int = MAX_MESSAGE_CHARS, max_bytes: int | None = None,
) -> ChatLog:
    """Read a chat log of any supported format; see the module docstring for the policy.
    Texts longer than max_chars are cut there (counted in ChatLog.truncated); a file that reads
    (decompresses) to more than max_bytes is ChatTooLargeError."""
    path = Path(path)
    if fmt is not None and fmt not in READERS:
        raise ValueError(f"unknown chat format {fmt!r}; choose one of {', '.join(READERS)}")
    payload = _load(path, max_bytes)
    fmt = fmt or _detect(payload, path)
    if isinstance(payload, str) != (fmt in TEXT_FORMATS) and fmt != "irc-tags":
        raise ChatFormatError(f"{path}: is {'text' if isinstance(payload, str) else 'JSON'}, not {fmt}")
    unit = "line" if isinstance(payload, str) else "record"
    messages: list[Message] = []
    skipped: list[Skip] = []
    events = truncated = 0
    try:
        for loc, item in READERS[fmt](payload, stream_start):
            if isinstance(item, Message):
                if len(item.text) > max_chars or len(item.user) > MAX_USER_CHARS:
                    # One huge message would be stored with every segment that sees it and then
                    # sit in the tokenizer's training: cut to what Twitch itself would allow.
                    truncated += 1
                    item = Message(item.t, item.user[:MAX_USER_CHARS].strip(), item.text[:max_chars].strip())
                # Millisecond resolution (Twitch's own) for every format: no float noise such
                # as 5.5969999999999995, and write_irc round-trips exactly.
                messages.append(Message(round(item.t, 3), item.user, item.text))
            elif item is None:
                events += 1
            else:
                skipped.append(Skip(str(path), loc, item))
    except (KeyError, TypeError, AttributeError) as e:  # a JSON top level of the wrong shape
        raise ChatFormatError(f"{path}: not a {fmt} chat log ({type(e).__name__}: {e})") from e
    candidates = len(messages) + len(skipped)
    if not messages or len(skipped) > max_bad_fraction * candidates:
        first = f"first bad {unit} {skipped[0].line}: {skipped[0].reason}" if skipped else "no messages at all"
        raise ChatFormatError(
            f"{path}: read as {fmt}, {len(skipped)} of {candidates} {unit}s malformed "
            f"(limit {max_bad_fraction:.0%}); {first}. Check the file, or pass fmt= (one of {', '.join(READERS)})"
        )
    messages.sort(key=lambda m: m.t)  # list.sort is stable: equal times keep file order
    return ChatLog(messages, fmt, str(path), skipped, events,
                   note=_time_note(payload, fmt, stream_start, path), truncated=truncated)


def _time_note(payload: Any, fmt: str, stream_start: float | None, path: Path) -> str:
    if fmt != "twitchdownloader-txt" or stream_start is not None or not re.search(r"^\[\d{4}-", payload, re.M):
        return ""
    note = "UTC timestamps: t=0 is the first message (pass --stream-start, unix seconds, to align with the VOD)"
    log.warning("%s: %s", path, note)
    return note


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    s, frac = divmod(ms, 1000)
    base = f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    if not frac:
        return base
    return f"{base}.{frac:03d}" if frac % 10 else f"{base}.{frac // 10:02d}"  # tcd writes .50


def write_json(messages: Iterable[Message], path: str | Path) -> None:
    """The vod2chat chat JSON [{"t", "user", "text"}], one message per line: diffable, greppable,
    still one JSON document, and read back by parse_chat (format "vod2chat")."""
    Path(path).write_text("[\n" + ",\n".join(json.dumps({"t": m.t, "user": m.user, "text": m.text}, ensure_ascii=False)
                                              for m in messages) + "\n]\n", encoding="utf-8")


def write_irc(messages: Iterable[Message], path: str | Path) -> None:
    """Write tcd irc text; t is kept to the millisecond ([0:00:01.50], [0:02:07.467]).

    Newlines in text become spaces (one message per line), '>' and newlines in a user name '_';
    surrounding whitespace is dropped,
    as parse_chat drops it, so parse_chat(write_irc(ms)) == ms for stripped, ms-precision input.
    """
    lines = []
    for m in messages:
        text = re.sub(r"[\r\n]+", " ", m.text).strip()
        # '>' ends the name in this format and a line break ends the line: such names (other
        # platforms allow them) are written with '_' there, so every message still fits.
        user = re.sub(r"[>\r\n]", "_", m.user).strip()
        if m.t < 0 or not user or not text:
            raise ValueError(f"cannot write {m} as tcd irc text: needs t >= 0, a user and text")
        lines.append(f"[{_stamp(m.t)}] <{user}> {text}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


# Public names for live chat (inference/twitch_irc.py): one IRC line at a time, as read here.
parse_irc_line = _parse_irc
irc_privmsg = _irc_privmsg
