"""Watch generated chat next to its VOD: `.ass` subtitles for any player, and an HTML page.

    write_ass(messages, "chat.ass")                  # mpv/VLC: load as a subtitle track
    write_html(messages, "replay.html", "vod.mp4")   # open in a browser

Both take messages with .t (seconds from VOD start), .user and .text (ingest.chat.Message).

The .ass is a chat column on the left that scrolls up at a constant speed: each message is ONE
Dialogue event starting exactly at its time, entering at the bottom and moving up (\\move)
inside a clipped column (\\clip) until it leaves at the top. When messages come faster than the
column scrolls, a message waits just below the column (hidden by the clip) and scrolls in
behind the previous one, so lines never overlap. One event per message with the tcd layout
(`{colour}user{white}: text`) keeps the file readable by ingest.chat.parse_chat: it parses back
to the same messages (times to the centisecond). ASS has no escape for `{`, `}` and `\\`, so
they are written as fullwidth look-alikes.

The HTML page is one self-contained file (inline CSS, JS and chat JSON): the video, referenced
by a path relative to the page or embedded as a data: URI when small, and a Twitch-like chat
column showing every message whose t <= video.currentTime, kept in sync on play, pause and
seeking in either direction.
"""

from __future__ import annotations

import base64
import html
import json
import os
import textwrap
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, Protocol, Sequence


class ChatMessage(Protocol):
    t: float
    user: str
    text: str


# Twitch's default name colours (for users who never picked one).
NAME_COLOURS = ("#FF0000", "#0000FF", "#008000", "#B22222", "#FF7F50", "#9ACD32", "#FF4500", "#2E8B57",
                "#DAA520", "#D2691E", "#5F9EA0", "#1E90FF", "#FF69B4", "#8A2BE2", "#00FF7F")


def name_colour(user: str) -> str:
    return NAME_COLOURS[zlib.crc32(user.encode("utf-8")) % len(NAME_COLOURS)]


def on_dark(hex_rgb: str, min_luma: float = 0.35) -> str:
    """The colour blended towards white until readable on a dark background (as Twitch does)."""
    rgb = [int(hex_rgb[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    luma = lambda c: 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]  # noqa: E731
    a = 0.0 if luma(rgb) >= min_luma else (min_luma - luma(rgb)) / (1 - luma(rgb))
    return "#" + "".join(f"{round(255 * (c + (1 - c) * a)):02X}" for c in rgb)


# -- .ass ---------------------------------------------------------------------------------
def ass_time(t: float) -> str:
    cs = max(0, round(t * 100))
    return f"{cs // 360000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def ass_text(s: str) -> str:
    """Plain text for an ASS event: override braces and backslashes have no escape in ASS."""
    return " ".join(s.replace("\\", "\uff3c").replace("{", "\uff5b").replace("}", "\uff5d").split())


def ass_colour(hex_rgb: str) -> str:
    r, g, b = hex_rgb[1:3], hex_rgb[3:5], hex_rgb[5:7]
    return f"&H{b}{g}{r}&".upper()


def write_ass(messages: Sequence[ChatMessage], path: str | Path, width: int = 1280, height: int = 720,
              font_size: int = 22, column_frac: float = 0.34, seconds_on_screen: float | None = None,
              title: str = "vod2chat") -> None:
    """A scrolling chat column as .ass subtitles (see the module docstring).

    seconds_on_screen: how long a message takes to cross the column; default from the chat's
    rate (about one column of messages per crossing), clamped to [4, 15] s."""
    msgs = sorted(messages, key=lambda m: m.t)
    line_h = round(font_size * 1.3)
    x0, top, bottom = 16, 40, height - 40
    x1 = x0 + int(width * column_frac)
    chars = max(10, int((x1 - x0) / (0.52 * font_size)))  # average glyph width of a sans font
    col_h = bottom - top
    if seconds_on_screen is None:
        span = (msgs[-1].t - msgs[0].t) if len(msgs) > 1 else 0.0
        rate = (len(msgs) - 1) / span if span > 0 else 0.0
        seconds_on_screen = min(15.0, max(4.0, col_h / (1.4 * line_h * rate))) if rate > 0 else 15.0
    speed = col_h / seconds_on_screen  # px/s

    header = textwrap.dedent(f"""\
        [Script Info]
        ; written by vod2chat: a chat column that scrolls up; one Dialogue per message
        Title: {ass_text(title)}
        ScriptType: v4.00+
        WrapStyle: 2
        ScaledBorderAndShadow: yes
        PlayResX: {width}
        PlayResY: {height}

        [V4+ Styles]
        Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
        Style: Chat,Arial,{font_size},&H00FFFFFF,&H00FFFFFF,&H00000000,&H80000000,0,0,0,0,100,100,0,0,1,2,0,7,0,0,0,1

        [Events]
        Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
        """)
    events = []
    prev_off, prev_t = 0.0, None
    for m in msgs:
        user, text = ass_text(m.user), ass_text(m.text)
        lines = textwrap.wrap(f"{user}: {text}", chars, break_long_words=False, break_on_hyphens=False) or [""]
        h = len(lines) * line_h
        # off: how far below the column's bottom this message starts, so that it never overlaps
        # the previous one (which has moved up speed * dt since it started at its own offset).
        off = 0.0 if prev_t is None else max(0.0, prev_off - speed * (m.t - prev_t) + h)
        off = max(off, 0.0)
        prev_off, prev_t = off, m.t
        y_start = bottom + off - h  # top edge of the message
        travel = bottom + off - top  # until its bottom edge leaves at the top
        dur = travel / speed
        # Wrapped lines join with \N: parse_chat reads it back as the space it replaced.
        body = "\\N".join(lines)
        name_len = len(user)
        coloured = f"{{\\c{ass_colour(name_colour(m.user))}\\b1}}{body[:name_len]}{{\\c&HFFFFFF&\\b0}}{body[name_len:]}"
        tags = (f"{{\\an7\\move({x0},{y_start:.0f},{x0},{y_start - travel:.0f},0,{round(dur * 1000)})"
                f"\\clip({x0 - 4},{top},{x1},{bottom})}}")
        events.append(f"Dialogue: 0,{ass_time(m.t)},{ass_time(m.t + dur)},Chat,,0,0,0,,{tags}{coloured}")
    Path(path).write_text(header + "\n".join(events) + ("\n" if events else ""), encoding="utf-8")


# -- HTML ---------------------------------------------------------------------------------
VIDEO_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
              ".mov": "video/quicktime", ".ogv": "video/ogg", ".ts": "video/mp2t", ".flv": "video/x-flv"}

CSS = """
*{box-sizing:border-box}
html,body{margin:0;height:100%;background:#0e0e10;color:#efeff1;font:13px/1.45 Inter,Roobert,"Helvetica Neue",Arial,sans-serif}
#app{display:flex;height:100vh}
#player{flex:1;display:flex;flex-direction:column;min-width:0}
#video{flex:1;width:100%;min-height:0;background:#000}
#info{padding:8px 14px;color:#adadb8;border-top:1px solid #26262c}
#info b{color:#efeff1}
#chat{width:340px;display:flex;flex-direction:column;background:#18181b;border-left:1px solid #26262c}
#chat header{padding:10px;text-align:center;font-weight:600;font-size:12px;letter-spacing:.05em;border-bottom:1px solid #26262c}
#messages{flex:1;overflow-y:auto;padding:6px 0 10px}
.msg{padding:3px 18px;word-wrap:break-word;overflow-wrap:anywhere}
.msg:hover{background:#26262c}
.msg .time{color:#adadb8;font-size:11px;margin-right:5px;font-variant-numeric:tabular-nums}
.msg .user{font-weight:700}
#more{display:none;position:relative;margin:-40px auto 10px;padding:4px 12px;border-radius:4px;border:0;background:#9147ff;color:#fff;cursor:pointer}
"""

JS = """
const DATA = JSON.parse(document.getElementById('chat-data').textContent);
const START = DATA_START;
const MAX_DOM = 150;  // messages kept in the column (Twitch keeps about as many)
const video = document.getElementById('video');
const list = document.getElementById('messages');
const more = document.getElementById('more');
const clock = document.getElementById('clock');
const count = document.getElementById('count');
const times = DATA.map(m => m.t);
let first = 0, shown = 0;  // DATA[first, shown) are in the column
let follow = true;  // stick to the newest message unless the viewer scrolled up

function upperBound(t) {  // how many messages have m.t <= t
  let lo = 0, hi = times.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (times[mid] <= t) lo = mid + 1; else hi = mid; }
  return lo;
}
function hms(t) {
  t = Math.max(0, Math.floor(t));
  const h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, s = t % 60;
  return (h ? h + ':' + String(m).padStart(2, '0') : m) + ':' + String(s).padStart(2, '0');
}
function render(m) {
  const div = document.createElement('div');
  div.className = 'msg';
  div.dataset.t = m.t;
  const time = document.createElement('span'); time.className = 'time'; time.textContent = hms(m.t);
  const user = document.createElement('span'); user.className = 'user'; user.textContent = m.user;
  user.style.color = m.color;
  const text = document.createElement('span'); text.className = 'text'; text.textContent = ': ' + m.text;
  div.append(time, user, text);
  return div;
}
function sync() {
  const n = upperBound(video.currentTime + 1e-3);
  if (n < shown || n - MAX_DOM > shown) {  // seeked back, or far ahead: rebuild
    list.replaceChildren();
    first = shown = Math.max(0, n - MAX_DOM);
  }
  if (n > shown) {
    const frag = document.createDocumentFragment();
    for (; shown < n; shown++) frag.appendChild(render(DATA[shown]));
    list.appendChild(frag);
  }
  while (shown - first > MAX_DOM) { list.firstChild.remove(); first++; }
  if (follow) list.scrollTop = list.scrollHeight;
  clock.textContent = hms(video.currentTime);
  count.textContent = shown;
}
list.addEventListener('scroll', () => {
  follow = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  more.style.display = follow ? 'none' : 'block';
});
more.addEventListener('click', () => { follow = true; list.scrollTop = list.scrollHeight; more.style.display = 'none'; });
for (const ev of ['timeupdate', 'seeking', 'seeked', 'play', 'pause', 'loadedmetadata']) video.addEventListener(ev, sync);
video.addEventListener('loadedmetadata', () => { if (START > 0 && video.currentTime < START) video.currentTime = START; }, {once: true});
// timeupdate fires only about 4 times a second: follow frames while playing.
(function tick() { if (!video.paused) sync(); requestAnimationFrame(tick); })();
sync();
"""


def video_src(video: str | Path, page: str | Path, embed_max_bytes: int) -> str:
    """A data: URI for a small video, else the video's path relative to the page, URL-quoted."""
    video, page = Path(video), Path(page)
    if embed_max_bytes and video.stat().st_size <= embed_max_bytes:
        mime = VIDEO_MIME.get(video.suffix.lower(), "video/mp4")
        return f"data:{mime};base64,{base64.b64encode(video.read_bytes()).decode('ascii')}"
    rel = os.path.relpath(video.resolve(), page.resolve().parent)
    return urllib.parse.quote(Path(rel).as_posix())


# Inside <script> the HTML parser, not JSON, decides where the data ends: '</script>' closes it
# and '<!--' switches it into an escaped state. As \u escapes these characters are still the same
# JSON (they can only occur inside strings) but invisible to the HTML parser; U+2028/9 for old JS.
_SCRIPT_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def chat_json(messages: Sequence[ChatMessage]) -> str:
    """The chat as JSON that is safe inside <script>, whatever the messages say."""
    data: list[dict[str, Any]] = [{"t": round(float(m.t), 3), "user": m.user, "text": m.text,
                                   "color": on_dark(name_colour(m.user))} for m in sorted(messages, key=lambda m: m.t)]
    return json.dumps(data, ensure_ascii=False).translate(_SCRIPT_SAFE)


def write_html(messages: Sequence[ChatMessage], path: str | Path, video: str | Path, title: str = "",
               start: float = 0.0, embed_max_bytes: int = 16 << 20) -> None:
    """A self-contained replay page: the video and a chat column in sync with it.

    start: where playback begins (seconds from VOD start, where the generated range starts).
    embed_max_bytes: embed the video as a data: URI when it is at most this big (0: never);
    otherwise the page references it by a path relative to the page, so keep them together."""
    title = title or f"vod2chat replay: {Path(video).name}"
    src = video_src(video, path, embed_max_bytes)
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<div id="app">
  <main id="player">
    <video id="video" controls preload="auto" playsinline src="{html.escape(src, quote=True)}"></video>
    <div id="info"><b>{html.escape(title)}</b> &middot; <span id="clock">0:00</span> &middot;
      <span id="count">0</span> of {len(messages)} generated messages</div>
  </main>
  <aside id="chat">
    <header>STREAM CHAT (generated by vod2chat)</header>
    <div id="messages" role="log" aria-live="polite"></div>
    <button id="more">More messages below</button>
  </aside>
</div>
<script id="chat-data" type="application/json">{chat_json(messages)}</script>
<script>{JS.replace("DATA_START", json.dumps(float(start)))}</script>
</body>
</html>
"""
    Path(path).write_text(doc, encoding="utf-8")
