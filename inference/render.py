"""`vod2chat render`: a chat log drawn as video, the way Twitch shows it.

    vod2chat render --chat chat.json --out chat.webm                  # a column with alpha, for editors
    vod2chat render --chat chat.json --out chat.mp4 --background "#00FF00"   # chroma key
    vod2chat render --chat chat.json --over vod.mp4 --out both.mp4    # the VOD with its chat, audio kept

Why it is fast (TwitchDownloader's users report about real time; this is several times that):
the picture only changes when a message arrives, so each message is drawn once into a sprite
(PIL, when it first shows), a frame is composited from sprites by numpy row copies only when
the visible set changes, and otherwise the previous, already converted frame is handed to the
encoder again. The encoders run in their fast modes (VP9 realtime, QuickTime RLE, x264
ultrafast). Memory is bounded: only the sprites on screen are kept and frames are streamed.

Untrusted input: emote images come from the chat file itself (TwitchDownloader JSON made with
-E, `embeddedData`), are size-checked before decoding and skipped when they do not decode;
nothing is fetched. Text that the font cannot draw shows as the font's box glyph.
"""

from __future__ import annotations

import base64
import bisect
import gzip
import io
import json
import logging
import re
import time
import unicodedata
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vod2chat.config import param, save_config
from vod2chat.ingest.chat import Message, parse_chat, parse_irc_line, td_html_records

log = logging.getLogger(__name__)

# Twitch's colours for chatters who never chose one; the pick is a stable hash of the name.
TWITCH_DEFAULT_COLOURS = ("#FF0000", "#0000FF", "#008000", "#B22222", "#FF7F50", "#9ACD32", "#FF4500", "#2E8B57",
                          "#DAA520", "#D2691E", "#5F9EA0", "#1E90FF", "#FF69B4", "#8A2BE2", "#00FF7F")
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
                   "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/Library/Fonts/Arial Unicode.ttf",
                   "/System/Library/Fonts/Supplemental/Arial Unicode.ttf", "C:/Windows/Fonts/segoeui.ttf")
MAX_EMOTE_BYTES = 1 << 20
MAX_EMOTE_SIDE = 512


@dataclass
class RenderConfig:
    chat: str = param("", "a chat log in any format vod2chat reads (or what `generate` wrote)", required=True)
    out: str = param("", ".webm (VP9 with alpha), .mov (QuickTime RLE with alpha) or .mp4 (H.264)", required=True)
    over: str = param("", "a VOD: the output is the VOD with the chat beside or over it, audio kept (.mp4)")
    layout: str = param("beside", "with --over: the chat column beside the video or over its right side",
                        choices=["beside", "over"])
    width: int = param(350, "chat column width in pixels", ge=16, le=4096)
    height: int = param(720, "chat column height (with --over: the video's height)", ge=16, le=4096)
    fps: float = param(30.0, "frames per second (with --over: the video's)", gt=0, le=240)
    start: float = param(0.0, "seconds of chat time at the first frame", ge=0)
    end: float = param(0.0, "seconds; 0: the last message + 5 s (with --over: the video's end)", ge=0)
    background: str = param("", "'' (transparent for .webm/.mov, #00FF00 for .mp4) or a colour #RRGGBB[AA]")
    font: str = param("", "a TrueType font file; default DejaVu Sans found at run time, else Pillow's own font")
    font_size: int = param(15, "pixels", ge=4, le=200)
    timestamps: bool = param(False, "show each message's time before the name")
    stream_start: float | None = param(None, "unix seconds, for chat logs with wall-clock times", ge=0)
    quality: int = param(30, "encoder CRF (lower: larger and sharper)", ge=0, le=63)
    progress: bool = param(True, "show a progress bar")


@dataclass
class Style:
    width: int
    font_size: int
    timestamps: bool
    bg: tuple[int, int, int, int]  # column background, straight alpha
    pad: int = 6
    line_h: int = 0

    def __post_init__(self) -> None:
        self.line_h = self.line_h or round(self.font_size * 1.55)


# -- fonts, colours, emotes ---------------------------------------------------------------------
def find_font(path: str = "") -> tuple[str, str]:
    """(font file or '' for Pillow's bundled font, a description saying which)."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--font {path}: no such file")
        return path, path
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    bundled = [str(Path(p) / "mpl-data/fonts/ttf/DejaVuSans.ttf") for p in (spec.submodule_search_locations or [])] \
        if spec else []
    for p in [*FONT_CANDIDATES, *bundled]:
        if Path(p).is_file():
            return p, f"{Path(p).stem} ({p})"
    return "", "Pillow's bundled font (no DejaVu Sans found; pass --font)"


def load_font(path: str, size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def hash_colour(user: str) -> str:
    return TWITCH_DEFAULT_COLOURS[zlib.crc32(user.lower().encode()) % len(TWITCH_DEFAULT_COLOURS)]


def parse_colour(s: str, default_alpha: int = 255) -> tuple[int, int, int, int]:
    h = s.strip().lstrip("#")
    if len(h) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in h):
        raise ValueError(f"bad colour {s!r}: use #RRGGBB or #RRGGBBAA")
    v = [int(h[i:i + 2], 16) for i in range(0, len(h), 2)]
    return (v[0], v[1], v[2], v[3] if len(v) == 4 else default_alpha)


def _decode_emote(data: str, size: int) -> Any | None:
    """A base64 image from the chat file, scaled to `size` pixels high; None if unusable."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=False)
        if len(raw) > MAX_EMOTE_BYTES:
            return None
        im = Image.open(io.BytesIO(raw))
        if max(im.size) > MAX_EMOTE_SIDE:  # checked before the pixels are decoded
            return None
        im = im.convert("RGBA")  # an animated emote shows its first frame
        return im.resize((max(1, round(im.width * size / im.height)), size), Image.LANCZOS)
    except Exception as e:  # noqa: BLE001 - any undecodable image is only a missing emote
        log.debug("emote skipped: %s", e)
        return None


_HEX = re.compile(r"#[0-9a-fA-F]{6}")


def _read_doc(path: str) -> tuple[str, Any]:
    """(text, JSON or None) of a chat file: gzip by magic bytes, UTF-16 by its byte order mark."""
    raw = Path(path).read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    text = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig", errors="replace")
    try:
        return text, json.loads(text)
    except json.JSONDecodeError:
        return text, None


def _colour_pairs(fmt: str, text: str, doc: Any) -> Iterator[tuple[Any, Any]]:
    """(user, colour) as each format stores them; checked by the caller."""
    if fmt == "twitchdownloader-html":
        yield from ((" ".join(r["user"].split()), r["color"]) for r in td_html_records(text))
    elif fmt == "v5-rechat":
        for c in (doc.get("comments", []) if isinstance(doc, dict) else doc or []):
            if isinstance(c, dict):
                who, msg = c.get("commenter") or {}, c.get("message") or {}
                yield who.get("display_name") or who.get("name"), msg.get("user_color")
    elif fmt == "irc-tags":
        lines = doc["messages"] if isinstance(doc, dict) else text.split("\n")
        for ln in lines:
            if isinstance(ln, str) and ln.startswith("@"):
                tags, prefix, _, _ = parse_irc_line(ln.strip())
                yield tags.get("display-name", "").strip() or prefix.split("!", 1)[0], tags.get("color")
    elif fmt in ("chat-downloader", "chat-downloader-jsonl"):
        recs = doc if isinstance(doc, list) else [json.loads(ln) for ln in text.split("\n") if ln.strip()[:1] == "{"]
        for r in recs:
            a = r.get("author") if isinstance(r, dict) else None
            if isinstance(a, dict):
                yield a.get("display_name") or a.get("name"), a.get("colour")


def chat_extras(path: str, fmt: str, emote_px: int) -> tuple[dict[str, str], dict[str, Any]]:
    """User colours the chat file carries (TwitchDownloader/v5 JSON and HTML, IRC tags,
    chat-downloader) and emote images embedded in a TwitchDownloader JSON (-E)."""
    text, doc = _read_doc(path)
    colours: dict[str, str] = {}
    try:
        for name, colour in _colour_pairs(fmt, text, doc):
            if isinstance(name, str) and isinstance(colour, str) and _HEX.fullmatch(colour):
                colours.setdefault(name, colour)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # odd records: hash colours instead
        log.warning("%s: user colours not read (%s); names get Twitch's default colours", path, e)
    emotes: dict[str, Any] = {}
    embedded = (doc.get("embeddedData") or doc.get("emotes") or {}) if isinstance(doc, dict) else {}
    for key in ("thirdParty", "firstParty"):  # first party wins a name clash, as on Twitch
        for e in (embedded.get(key) or []) if isinstance(embedded, dict) else []:
            if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("data"), str):
                im = _decode_emote(e["data"], emote_px)
                if im is not None:
                    emotes[e["name"]] = im
    return colours, emotes


# -- message sprites ---------------------------------------------------------------------------------
def _visible_text(s: str) -> str:
    """Control and format characters have no glyph and may move the pen: drop them (ZWJ stays,
    emoji sequences need it). Everything else is drawn; a missing glyph is the font's box."""
    return "".join(ch for ch in s if ch == "\u200d" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co"))


def _stamp(t: float) -> str:
    s = int(max(t, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _tokens(m: Message, colour: str, style: Style, emotes: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(kind, payload, colour) runs: 'text' words (each with its trailing space) or 'emote' images."""
    out: list[tuple[str, Any, Any]] = []
    if style.timestamps:
        out.append(("text", _stamp(m.t) + " ", (173, 173, 184, 255)))
    out.append(("name", _visible_text(m.user), parse_colour(colour)))
    out.append(("text", ": ", (239, 239, 241, 255)))
    for line_no, line in enumerate(m.text.split("\n")):
        if line_no:
            out.append(("break", None, None))
        for w in line.split(" "):
            if w in emotes:
                out.append(("emote", emotes[w], None))
            elif w:
                out.append(("text", _visible_text(w) + " ", (239, 239, 241, 255)))
    return out


def _layout(tokens: list[tuple[str, Any, Any]], font: Any, bold: Any, width: int) -> list[list[tuple]]:
    """Greedy word wrap into lines of (x, kind, payload, colour); a word wider than the column
    is cut by characters."""
    lines: list[list[tuple]] = [[]]
    x = 0.0
    for kind, payload, colour in tokens:
        if kind == "break":
            lines.append([])
            x = 0.0
            continue
        f = bold if kind == "name" else font
        pieces = [payload] if kind == "emote" else _split_to_fit(payload, f, width)
        for p in pieces:
            w = p.width if kind == "emote" else f.getlength(p)
            if x + w > width and x > 0:
                lines.append([])
                x = 0.0
            lines[-1].append((x, kind, p, colour))
            x += w
    return lines


def _split_to_fit(word: str, font: Any, width: int) -> list[str]:
    if font.getlength(word) <= width:
        return [word]
    parts, cur = [], ""
    for ch in word:
        if cur and font.getlength(cur + ch) > width:
            parts.append(cur)
            cur = ""
        cur += ch
    return parts + [cur] if cur else parts


def render_sprite(m: Message, colour: str, style: Style, fonts: tuple[Any, Any], emotes: dict[str, Any]) -> np.ndarray:
    """One message as an RGBA array (column width x its height), over the column background."""
    from PIL import Image, ImageDraw

    font, bold = fonts
    inner = style.width - 2 * style.pad
    lines = _layout(_tokens(m, colour, style, emotes), font, bold, inner)
    h = len(lines) * style.line_h + style.pad
    im = Image.new("RGBA", (style.width, h), style.bg)
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        y = style.pad // 2 + i * style.line_h
        for x, kind, p, c in line:
            if kind == "emote":
                im.alpha_composite(p, (style.pad + int(x), y + (style.line_h - p.height) // 2))
            else:
                # Names are bold: the font's bold file, else a 1px stroke in the name's own colour.
                f = bold if kind == "name" else font
                draw.text((style.pad + x, y + (style.line_h - style.font_size) // 2 - 1), p, font=f, fill=c,
                          stroke_width=1 if kind == "name" and bold is font else 0, stroke_fill=c)
    return np.asarray(im)


# -- the timeline ------------------------------------------------------------------------------------
class ChatColumn:
    """Frames of the chat column over time. Sprites are made when a message first shows and
    dropped when it has scrolled off; a frame is rebuilt only when the visible set changes."""

    def __init__(self, messages: list[Message], colours: dict[str, str], emotes: dict[str, Any], style: Style,
                 height: int, font_path: str) -> None:
        self.msgs = sorted(messages, key=lambda m: m.t)
        self.times = [m.t for m in self.msgs]
        self.colours, self.emotes, self.style, self.height = colours, emotes, style, height
        regular = load_font(font_path, style.font_size)
        bold_path = Path(font_path).with_name(f"{Path(font_path).stem}-Bold{Path(font_path).suffix}") if font_path else None
        self.fonts = (regular, load_font(str(bold_path), style.font_size) if bold_path and bold_path.is_file() else regular)
        self.sprites: dict[int, np.ndarray] = {}
        self.shown = -1  # messages [0, shown) are on screen (or scrolled past)
        self.frame = self._blank()
        self.rebuilds = 0

    def _blank(self) -> np.ndarray:
        return np.broadcast_to(np.array(self.style.bg, np.uint8), (self.height, self.style.width, 4)).copy()

    def _sprite(self, i: int) -> np.ndarray:
        if i not in self.sprites:
            m = self.msgs[i]
            self.sprites[i] = render_sprite(m, self.colours.get(m.user) or hash_colour(m.user), self.style,
                                            self.fonts, self.emotes)
        return self.sprites[i]

    def at(self, t: float) -> tuple[np.ndarray, bool]:
        """(the column at time t, whether it changed since the previous call)."""
        k = bisect.bisect_right(self.times, t)
        if k == self.shown:
            return self.frame, False
        self.shown = k
        frame = self._blank()
        y, i, keep = self.height, k - 1, {}
        while i >= 0 and y > 0:  # newest at the bottom, older ones above, cut at the top
            s = self._sprite(i)
            keep[i] = s
            top = y - s.shape[0]
            frame[max(top, 0):y] = s[max(0, -top):]
            y, i = top, i - 1
        self.sprites = keep
        self.frame = frame
        self.rebuilds += 1
        return frame, True


# -- encoding -------------------------------------------------------------------------------------------
@dataclass
class Output:
    """A video being written: the container, its video stream and the pixel format frames get."""
    container: Any
    stream: Any
    pix_fmt: str
    frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


ENCODERS = {  # suffix -> (codec, pixel format, options): each encoder's fast mode
    # tune-content screen + aq-mode 0: libvpx's tools for text and flat colour, a third less CPU per frame here.
    ".webm": ("libvpx-vp9", "yuva420p", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0",
                                         "b": "0", "tune-content": "screen", "aq-mode": "0"}),
    ".mov": ("qtrle", "argb", {}),
    ".mp4": ("libx264", "yuv420p", {"preset": "ultrafast"}),
}


def open_output(path: str, width: int, height: int, fps: Fraction, quality: int) -> Output:
    import os

    import av

    suffix = Path(path).suffix.lower()
    if suffix not in ENCODERS:
        raise ValueError(f"--out {path}: use .webm (VP9 with alpha), .mov (QuickTime RLE with alpha) or .mp4 (H.264)")
    codec, pix, opts = ENCODERS[suffix]
    opts = dict(opts)
    if codec != "qtrle":
        opts["crf"] = str(quality)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    c = av.open(path, "w")
    s = c.add_stream(codec, rate=fps, options=opts)
    s.width, s.height, s.pix_fmt = width, height, pix
    s.codec_context.time_base = 1 / fps
    s.thread_count = os.cpu_count() or 1
    return Output(c, s, pix)


def write_frame(out: Output, frame: Any) -> None:
    frame.pts = out.frames
    out.frames += 1
    for p in out.stream.encode(frame):
        out.container.mux(p)


def close_output(out: Output) -> None:
    for s in [out.stream, *out.extra.get("flush", [])]:
        for p in s.encode():
            out.container.mux(p)
    out.container.close()


def _bar(total: float, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=round(float(total), 1), unit="s", desc=desc, disable=not enabled,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of video [{elapsed}<{remaining}, {rate_fmt}]")


def render_column(column: ChatColumn, out_path: str, start: float, end: float, fps: Fraction, quality: int,
                  progress: bool = True) -> dict[str, Any]:
    """The chat column alone, frame i showing the chat at start + i/fps."""
    import av

    out = open_output(out_path, column.style.width, column.height, fps, quality)
    n = max(1, int(np.ceil((end - start) * fps)))
    bar = _bar(n / fps, progress, "render")
    vframe = None
    t0 = time.perf_counter()
    for i in range(n):
        img, changed = column.at(start + i / fps)
        if changed or vframe is None:  # the same converted frame is encoded again until the chat moves
            vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgba").reformat(format=out.pix_fmt)
        write_frame(out, vframe)
        if (i + 1) % int(fps) == 0:
            bar.update(1.0)
    close_output(out)
    bar.close()
    wall = time.perf_counter() - t0
    return {"frames": n, "seconds": n / float(fps), "wall_s": wall, "rebuilds": column.rebuilds}


def _audio_out(out: Output, src: Any) -> Any:
    """An AAC stream for the VOD's audio (MP4 players expect AAC; the source may be Opus/Vorbis)."""
    a = out.container.add_stream("aac", rate=src.codec_context.sample_rate or 48000)
    a.layout = "stereo" if (src.codec_context.layout.nb_channels or 2) >= 2 else "mono"
    out.extra["flush"] = [a]
    return a


def render_over(column: ChatColumn, vod: str, out_path: str, layout: str, start: float, end: float, quality: int,
                progress: bool = True) -> dict[str, Any]:
    """The VOD with the chat column beside it or over its right side, audio re-encoded to AAC."""
    import av

    if Path(out_path).suffix.lower() != ".mp4":
        raise ValueError(f"--out {out_path}: with --over the output is an .mp4")
    src = av.open(vod)
    vs = src.streams.video[0]
    aus = src.streams.audio[0] if src.streams.audio else None
    vw, vh = vs.codec_context.width, vs.codec_context.height
    cw = column.style.width
    fps = Fraction(vs.average_rate or 30).limit_denominator(1001)
    out = open_output(out_path, (vw + cw if layout == "beside" else vw) // 2 * 2, vh // 2 * 2, fps, quality)
    aout = _audio_out(out, aus) if aus is not None else None
    stop = end or float(src.duration or 0) / 1e6 or float("inf")
    if start > 0:
        src.seek(int(start * 1e6))
    bar = _bar(stop - start if stop < float("inf") else 0, progress, "render")
    blend, t0, shown = None, time.perf_counter(), 0.0
    for packet in src.demux(*[s for s in (vs, aus) if s is not None]):
        for fr in packet.decode():
            t = float(fr.time or 0.0)
            if t < start or t >= stop:
                continue
            if isinstance(fr, av.AudioFrame):
                fr.pts = round((t - start) * aout.codec_context.sample_rate)
                fr.time_base = Fraction(1, aout.codec_context.sample_rate)
                for p in aout.encode(fr):
                    out.container.mux(p)
                continue
            col, changed = column.at(t)
            if changed or blend is None:
                a = col[..., 3:4].astype(np.uint16)
                blend = (col[..., :3] * a // 255).astype(np.uint16), (255 - a)
            img = fr.to_ndarray(format="rgb24")
            canvas = np.empty((vh, out.stream.width, 3), np.uint8)
            if layout == "beside":
                canvas[:, :vw] = img
                region = np.zeros((vh, cw, 3), np.uint8)
            else:
                canvas[:] = img[:, :out.stream.width]
                region = canvas[:, -cw:]
            mixed = (blend[0] + region.astype(np.uint16) * blend[1] // 255).astype(np.uint8)
            canvas[:, -cw:] = mixed
            write_frame(out, av.VideoFrame.from_ndarray(canvas[:out.stream.height], format="rgb24"))
            if t - shown >= 1.0:
                bar.update(round(t - shown, 1))
                shown = t
    close_output(out)
    src.close()
    bar.close()
    wall = time.perf_counter() - t0
    return {"frames": out.frames, "seconds": out.frames / float(fps), "wall_s": wall, "rebuilds": column.rebuilds}


# -- entry points -------------------------------------------------------------------------------------------
def render_messages(messages: list[Message], out: str, *, over: str = "", layout: str = "beside", start: float = 0.0,
                    end: float = 0.0, width: int = 350, height: int = 720, fps: float = 30.0, background: str = "",
                    font: str = "", font_size: int = 15, timestamps: bool = False, quality: int = 30,
                    colours: dict[str, str] | None = None, emotes: dict[str, Any] | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Render messages to `out` (see RenderConfig for the options); returns what was written."""
    if not messages:
        raise ValueError(f"nothing to render into {out}: the chat has no messages")
    font_path, font_desc = find_font(font)
    suffix = Path(out).suffix.lower()
    if over:
        bg = parse_colour(background or "#00000080")  # over a video: a translucent dark column
        import av

        with av.open(over) as probe:
            height = probe.streams.video[0].codec_context.height
    else:
        bg = parse_colour(background) if background else ((0, 255, 0, 255) if suffix == ".mp4" else (0, 0, 0, 0))
        if suffix == ".mp4":
            bg = bg[:3] + (255,)  # H.264 has no alpha
    style = Style(width=width // 2 * 2, font_size=font_size, timestamps=timestamps, bg=bg)
    column = ChatColumn(messages, colours or {}, emotes or {}, style, height // 2 * 2, font_path)
    if over:
        stats = render_over(column, over, out, layout, start, end, quality, progress)
    else:
        stop = end or max(m.t for m in messages) + 5.0
        if stop <= start:
            raise ValueError(f"empty range: start {start} s, end {stop} s")
        stats = render_column(column, out, start, stop, Fraction(fps).limit_denominator(1001), quality, progress)
    return {**stats, "out": out, "font": font_desc, "speed": stats["seconds"] / max(stats["wall_s"], 1e-9)}


def main(cfg: RenderConfig) -> dict[str, Any]:
    if not cfg.chat or not cfg.out:
        raise ValueError("render needs --chat (a chat log) and --out (.webm, .mov or .mp4)")
    chat = parse_chat(cfg.chat, stream_start=cfg.stream_start)
    colours, emotes = chat_extras(cfg.chat, chat.format, round(cfg.font_size * 1.55))
    stats = render_messages(
        chat.messages, cfg.out, over=cfg.over, layout=cfg.layout, start=cfg.start, end=cfg.end, width=cfg.width,
        height=cfg.height, fps=cfg.fps, background=cfg.background, font=cfg.font, font_size=cfg.font_size,
        timestamps=cfg.timestamps, quality=cfg.quality, colours=colours, emotes=emotes, progress=cfg.progress)
    save_config(cfg, f"{cfg.out}.toml")
    print(f"{chat.summary()}\n{len(colours)} user colours and {len(emotes)} emote images from the chat file; "
          f"font: {stats['font']}\nwrote {cfg.out}: {stats['frames']} frames, {stats['seconds']:.1f} s of video "
          f"in {stats['wall_s']:.1f} s ({stats['speed']:.1f}x real time)")
    return stats
