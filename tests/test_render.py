"""`vod2chat render`: what was rendered is decoded back with PyAV and checked: frame count and
duration, alpha where asked, a known message's colour on screen from its time and not before,
embedded emotes drawn, text the font lacks never crashing, and --over keeping the VOD's audio."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vod2chat.inference.render import (TWITCH_DEFAULT_COLOURS, ChatColumn, Style, find_font, hash_colour,
                                       render_sprite)
from vod2chat.ingest.chat import Message
from vod2chat.launch.cli import main as cli

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _png(colour: tuple[int, int, int], size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour + (255,)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _td_json(path: Path) -> Path:
    """A TwitchDownloader JSON made with -E: user colours, embedded emote images."""
    def comment(t, name, colour, body):
        return {"content_offset_seconds": t, "commenter": {"display_name": name, "name": name.lower()},
                "message": {"body": body, "user_color": colour, "fragments": [{"text": body, "emoticon": None}]}}
    doc = {"streamer": {"name": "s", "id": 1}, "video": {"start": 0, "end": 10},
           "comments": [comment(0.5, "Grey", "#808080", "first"),
                        comment(2.0, "Reddy", "#FF0000", "hello from red"),
                        comment(3.0, "Other", None, "look BLUEBOX here"),
                        comment(3.5, "Other", None, "HUGE is not drawn")],
           "embeddedData": {"thirdParty": [{"id": "b1", "name": "BLUEBOX", "imageScale": 1, "data": _png(BLUE, (28, 28)),
                                            "width": 28, "height": 28},
                                           {"id": "h1", "name": "HUGE", "data": _png(BLUE, (2000, 8)), "width": 2000,
                                            "height": 8},
                                           {"id": "x", "name": "BROKEN", "data": "bm90IGFuIGltYWdl"}],
                            "firstParty": [], "twitchBadges": []}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _near(img: np.ndarray, colour: tuple[int, int, int], tol: int = 60) -> int:
    return int((np.abs(img[..., :3].astype(int) - colour).max(axis=-1) < tol).sum())


def _decode(path: Path, codec: str | None = None) -> tuple[list[np.ndarray], list[float], av.VideoFrame]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        ctx = av.CodecContext.create(codec, "r") if codec else None
        frames = []
        for pkt in c.demux(s):
            for f in (ctx.decode(pkt) if ctx else pkt.decode()):  # demux ends with the flushing packet
                frames.append(f)
    times = [i / 10 for i in range(len(frames))]  # render_debug.toml: 10 fps
    return [f.to_ndarray(format="rgba") for f in frames], times, frames[0]


def _render(tmp_path: Path, out: str, *extra: str) -> Path:
    chat = _td_json(tmp_path / "chat.json")
    rc = cli(["render", "--config", str(LAUNCH / "render_debug.toml"), "--chat", str(chat), "--out",
              str(tmp_path / out), "--end", "5", *extra])
    assert rc == 0
    return tmp_path / out


def test_webm_column_has_alpha_and_the_red_name_from_its_time(tmp_path):
    out = _render(tmp_path, "chat.webm")
    imgs, _, first = _decode(out, "libvpx-vp9")  # FFmpeg's own vp9 decoder drops the alpha plane
    assert first.format.name == "yuva420p" and (first.width, first.height) == (160, 240)
    assert len(imgs) == 50  # 5 s at 10 fps
    with av.open(str(out)) as c:
        assert c.duration / 1e6 == pytest.approx(5.0, abs=0.15)
    alpha = imgs[30][..., 3]
    assert (alpha < 16).mean() > 0.5 and (alpha > 240).sum() > 50  # mostly transparent, text opaque
    red = [_near(im, RED) for im in imgs]
    assert red[19] == 0 and all(r > 15 for r in red[20:])  # "Reddy" shows at 2.0 s, not before
    assert _near(imgs[29], BLUE) == 0 and _near(imgs[31], BLUE) > 200  # the embedded emote, from 3.0 s
    assert (tmp_path / "chat.webm.toml").is_file()


def test_mov_rle_keeps_alpha_and_mp4_sits_on_a_chroma_key(tmp_path):
    mov = _render(tmp_path, "chat.mov")
    imgs, _, first = _decode(mov)
    assert first.format.name == "argb" and len(imgs) == 50
    assert imgs[10][5, 5, 3] == 0 and _near(imgs[25], RED) > 15 and _near(imgs[15], RED) == 0
    mp4 = _render(tmp_path, "chat.mp4", "--timestamps")
    imgs, _, _ = _decode(mp4)
    assert len(imgs) == 50
    assert _near(imgs[40][:5], (0, 255, 0), 30) == 5 * 160  # the top rows: the key colour


def test_over_a_real_vod_keeps_audio_and_puts_chat_beside(tmp_path, real_data):
    video = real_data / "video/in1.mp4"  # 320x240, 29.97 fps, AAC, 7.0 s
    chat = _td_json(tmp_path / "chat.json")
    out = tmp_path / "both.mp4"
    assert cli(["render", "--config", str(LAUNCH / "render_debug.toml"), "--chat", str(chat), "--over", str(video),
                "--out", str(out), "--background", "#000000FF"]) == 0
    with av.open(str(out)) as c, av.open(str(video)) as src:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (320 + 160, 240)
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        assert c.duration / 1e6 == pytest.approx(src.duration / 1e6, abs=0.15)
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        audio = sum(f.samples for f in c.decode(audio=0))
    assert len(frames) == pytest.approx(209, abs=2) and audio / 44100 == pytest.approx(7.0, abs=0.2)
    col = lambda t: next(img for ft, img in frames if ft >= t)[:, 320:]  # noqa: E731
    assert _near(col(1.9), RED) == 0 and _near(col(2.1), RED) > 15  # "Reddy" at 2.0 s
    assert np.abs(frames[50][1][:, :320].astype(int) - 0).mean() > 10  # the VOD is there, not black


def test_sprites_never_crash_and_draw_what_the_font_lacks(tmp_path):
    font, desc = find_font()
    assert desc  # says which font it uses
    style = Style(width=200, font_size=14, timestamps=True, bg=(0, 0, 0, 0))
    from vod2chat.inference.render import load_font

    fonts = (load_font(font, 14), load_font(font, 14))
    for text in ["😀", "日本語のテキスト", "مرحبا بالعالم", "Z̸̢̛a̷l̶g̵o̴", "a" * 500, "\x00\x1b[31m\u202e\ufeff", "tab\there",
                 "line\nbreak\n\n", "\ud800"]:
        s = render_sprite(Message(1.0, "用户 name", text), "#00FF00", style, fonts, {})
        assert s.shape[1] == 200 and s.shape[2] == 4 and s.dtype == np.uint8
        assert (s[..., 3] > 0).sum() > 20  # something visible
    emoji = render_sprite(Message(1.0, "u", "😀"), "#00FF00", style, fonts, {})
    name_only = render_sprite(Message(1.0, "u", ""), "#00FF00", style, fonts, {})
    assert (emoji[..., 3] > 0).sum() > (name_only[..., 3] > 0).sum() + 10  # the emoji is a visible glyph or box
    long = render_sprite(Message(1.0, "u", "word " * 200), "#00FF00", style, fonts, {})
    assert long.shape[0] > 10 * style.line_h  # wrapped, not cut


def test_colours_and_bounded_sprites():
    assert hash_colour("Alice") == hash_colour("alice") and hash_colour("alice") in TWITCH_DEFAULT_COLOURS
    msgs = [Message(float(i), f"u{i % 7}", f"message {i}") for i in range(2000)]
    font, _ = find_font()
    col = ChatColumn(msgs, {}, {}, Style(width=160, font_size=13, timestamps=False, bg=(0, 0, 0, 0)), 240, font)
    for t in np.arange(0, 2000, 0.5):
        col.at(float(t))
        assert len(col.sprites) <= 240 // col.style.line_h + 2  # only what is on screen is kept
    assert col.rebuilds == 2000


def test_colours_from_irc_tags_and_chat_downloader_and_hostile_values(tmp_path, real_data):
    from vod2chat.inference.render import chat_extras

    colours, emotes = chat_extras(str(real_data / "chat/irc_tags_recentmessages_nymn.json"), "irc-tags", 20)
    assert len(colours) > 50 and emotes == {} and all(len(c) == 7 and c[0] == "#" for c in colours.values())
    cd = tmp_path / "cd.jsonl"
    cd.write_text("\n".join(json.dumps(r) for r in [
        {"author": {"name": "a", "display_name": "A", "colour": "#123456"}, "message": "x", "time_in_seconds": 1},
        {"author": {"name": "b", "colour": "red; background:url(x)"}, "message": "y", "time_in_seconds": 2},
        {"author": {"name": "c", "colour": 7}, "message": "z", "time_in_seconds": 3}]) + "\n", encoding="utf-8")
    assert chat_extras(str(cd), "chat-downloader-jsonl", 20)[0] == {"A": "#123456"}  # the others: hash colours
    out = tmp_path / "c.mov"
    assert cli(["render", "--config", str(LAUNCH / "render_debug.toml"), "--chat", str(cd), "--out", str(out)]) == 0


def test_over_layout_draws_on_the_video(tmp_path, real_data):
    video = real_data / "video/in1.mp4"
    out = tmp_path / "over.mp4"
    assert cli(["render", "--config", str(LAUNCH / "render_debug.toml"), "--chat", str(_td_json(tmp_path / "c.json")),
                "--over", str(video), "--layout", "over", "--out", str(out)]) == 0
    with av.open(str(out)) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (320, 240)
        assert c.streams.audio
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    at = lambda t: next(img for ft, img in frames if ft >= t)  # noqa: E731
    assert _near(at(1.9)[:, 160:], RED) == 0 and _near(at(2.1)[:, 160:], RED) > 15
    assert _near(at(2.1)[:, :160], RED, 30) < _near(at(2.1)[:, 160:], RED, 30)  # the column is on the right
