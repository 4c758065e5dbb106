"""The overlay page for OBS: a Twitch-like chat column on a transparent background, with new
messages pushed over Server-Sent Events as `live` writes them.

    GET /        the page (add http://127.0.0.1:PORT/ to OBS as a browser source)
    GET /events  text/event-stream: one `message` event per chat message, id "<server>-<n>"

A page that connects (or reconnects) gets the recent messages it has not seen: a reconnect to
the same server sends Last-Event-ID and gets only what it missed; after a server restart the
id names another server, so it gets the new server's backlog. EventSource reconnects by itself
after a dropped connection (`retry:` 1 s); the page also reopens it if the browser gave up
(a refused connection while the server was down), so OBS never needs a refresh.

Only those two paths exist: nothing on disk is served. Messages are inserted as text, never HTML.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

BACKLOG = 50  # messages a newly connected page gets
KEEPALIVE_S = 10.0  # a comment line this often: finds dead connections, keeps proxies open
# Each connection holds a thread: a socket that sends nothing (or stops reading) is closed after
# IDLE_TIMEOUT_S, and past MAX_CONNECTIONS open at once new ones are closed unanswered.
IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>vod2chat live</title>
<style>
  html, body { margin: 0; height: 100%; background: transparent; overflow: hidden; }
  #chat { position: absolute; left: 0; right: 0; bottom: 0; padding: 8px 10px; max-width: 420px;
          font: 600 18px/1.35 "Inter", "Roobert", "Helvetica Neue", Arial, sans-serif; color: #efeff1;
          text-shadow: 0 0 2px #000, 0 1px 3px #000; }
  .msg { padding: 2px 0; overflow-wrap: anywhere; animation: in .15s ease-out; }
  .user { font-weight: 700; }
  @keyframes in { from { opacity: 0; transform: translateY(6px); } to { opacity: 1; transform: none; } }
</style></head>
<body><div id="chat"></div>
<script>
const chat = document.getElementById('chat');
const params = new URLSearchParams(location.search);
const MAX = parseInt(params.get('max') || '30', 10);
const COLORS = ['#FF4A4A', '#5B99FF', '#00C853', '#B072FF', '#FF7F50', '#9ACD32', '#FF69B4', '#1E90FF',
                '#DAA520', '#00CED1', '#FF8C00', '#2E8B57', '#D2691E', '#8A2BE2', '#3CB371'];
function color(name) { let h = 0; for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0; return COLORS[h % COLORS.length]; }
const seen = new Set();
window.vod2chat = {received: 0, opened: 0, errors: 0};
function add(ev) {
  if (seen.has(ev.lastEventId)) return;
  seen.add(ev.lastEventId);
  const m = JSON.parse(ev.data);
  const row = document.createElement('div'); row.className = 'msg';
  const user = document.createElement('span'); user.className = 'user';
  user.textContent = m.user; user.style.color = color(m.user);
  const text = document.createElement('span'); text.className = 'text'; text.textContent = ': ' + m.text;
  row.append(user, text); chat.append(row);
  while (chat.children.length > MAX) chat.firstElementChild.remove();
  window.vod2chat.received++;
}
let es = null;
function connect() {
  es = new EventSource('/events');
  es.addEventListener('message', add);
  es.onopen = () => { window.vod2chat.opened++; };
  es.onerror = () => {
    window.vod2chat.errors++;
    // EventSource retries dropped connections itself; once it has given up (CLOSED), start again.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 1000);
  };
}
connect();
</script></body></html>
"""


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `max_connections` connections (threads) at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.max_connections, self.refused = max_connections, 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            if self.refused in (1, 100, 10000):
                log.warning("overlay: %d connections open: refusing more (%d so far)", self.max_connections,
                            self.refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Overlay:
    """A small threaded HTTP server; `publish` hands a message to every connected page."""

    def __init__(self, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT_S):
        self.server_id = uuid.uuid4().hex[:8]
        self.history: deque[tuple[int, str]] = deque(maxlen=BACKLOG)
        self.clients: set[queue.Queue] = set()
        self.lock = threading.Lock()
        self.n = 0
        self.closing = threading.Event()
        overlay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout  # the socket's: a request that never comes, a page that stopped reading

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("overlay: " + fmt, *args)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/":
                    body = PAGE.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                elif path == "/events":
                    overlay._stream(self)
                else:
                    self.send_error(404, "only / and /events here")

        self.httpd = _BoundedServer((host, port), Handler, max_connections)
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="overlay", daemon=True)

    @classmethod
    def start(cls, spec: str) -> "Overlay":
        """spec: HOST:PORT, :PORT or PORT (host 127.0.0.1)."""
        host, _, port = spec.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            port_n = int(port)
        except ValueError:
            raise ValueError(f"--serve {spec!r}: use HOST:PORT, e.g. 127.0.0.1:8765") from None
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("overlay: serving on %s: anyone who can reach this address sees the page", host)
        try:
            o = cls(host, port_n)
        except OSError as e:
            raise ValueError(f"--serve {spec}: cannot listen there ({e}); pick another port") from e
        o.thread.start()
        return o

    def publish(self, msg: dict[str, Any]) -> None:
        data = json.dumps({"t": msg["t"], "user": msg["user"], "text": msg["text"]}, ensure_ascii=False)
        with self.lock:
            self.n += 1
            self.history.append((self.n, data))
            for q in self.clients:
                q.put((self.n, data))

    def _event(self, n: int, data: str) -> bytes:
        # data holds JSON without raw newlines (json.dumps escapes them): one data: line.
        return f"id: {self.server_id}-{n}\ndata: {data}\n\n".encode()

    def _stream(self, h: BaseHTTPRequestHandler) -> None:
        last = h.headers.get("Last-Event-ID", "")
        sid, _, num = last.partition("-")
        after = int(num) if sid == self.server_id and num.isdigit() else 0
        q: queue.Queue = queue.Queue()
        with self.lock:
            backlog = [(n, d) for n, d in self.history if n > after]
            self.clients.add(q)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream; charset=utf-8")
            h.send_header("Cache-Control", "no-store")
            h.send_header("Connection", "keep-alive")
            h.end_headers()
            h.wfile.write(b"retry: 1000\n\n" + b"".join(self._event(n, d) for n, d in backlog))
            h.wfile.flush()
            while True:
                try:
                    item = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    if self.closing.is_set():
                        break
                    h.wfile.write(b": keepalive\n\n")
                    h.wfile.flush()
                    continue
                if item is None:  # close(): everything published before it has been sent
                    break
                h.wfile.write(self._event(*item))
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the page went away
        finally:
            with self.lock:
                self.clients.discard(q)
            h.close_connection = True

    def close(self, drain_s: float = 2.0) -> None:
        """Stop serving; the pages first get every message published so far (the last ones are
        written just before a source ends), for at most drain_s."""
        self.closing.set()
        with self.lock:
            for q in self.clients:
                q.put(None)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            with self.lock:
                if not self.clients:
                    break
            time.sleep(0.02)
        self.httpd.shutdown()
        self.httpd.server_close()
