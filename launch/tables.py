"""Tables the commands print."""

from __future__ import annotations

from vod2chat.shards.store import Store


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def store_table(url: str) -> str:
    rows = Store(url).summary()
    head = f"{'streamer':<20} {'vods':>5} {'hours':>8} {'messages':>9} {'segments':>9} {'shards':>6} {'bytes':>10}"
    lines = [head, "-" * len(head)]
    tot = {"vods": 0, "hours": 0.0, "messages": 0, "segments": 0, "shards": 0, "bytes": 0}
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['vods']:>5.0f} {r['hours']:>8.3f} {r['messages']:>9.0f} {r['segments']:>9.0f} "
                     f"{r['shards']:>6.0f} {_human_bytes(r['bytes']):>10}")
        for k in tot:
            tot[k] += r[k]
    lines.append(f"{'total':<20} {tot['vods']:>5.0f} {tot['hours']:>8.3f} {tot['messages']:>9.0f} "
                 f"{tot['segments']:>9.0f} {tot['shards']:>6.0f} {_human_bytes(tot['bytes']):>10}")
    return "\n".join(lines)
