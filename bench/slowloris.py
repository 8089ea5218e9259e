"""Slow clients against a running kakuin: N connections trickle request headers one byte a
second while /healthz is timed. Issue 10 item 4: /healthz must stay under 1 s.

    python bench/slowloris.py http://127.0.0.1:8080 --connections 20 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.request
from urllib.parse import urlsplit

# Never completed: the blank line that ends the headers is never sent.
_TRICKLE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096


def trickle(host: str, port: int, stop: threading.Event, opened: list[int]) -> None:
    """One slow client: a byte a second until told to stop (or the server hangs up)."""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError:
        return
    opened.append(1)
    try:
        for byte in _TRICKLE:
            if stop.is_set():
                break
            sock.sendall(bytes([byte]))
            stop.wait(1.0)
    except OSError:
        pass
    finally:
        sock.close()


def healthz_latencies(base: str, seconds: float) -> list[float]:
    """Time /healthz back to back (each with a 30 s ceiling) for ``seconds``."""
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=30) as resp:  # noqa: S310
                resp.read()
        except OSError:
            pass
        out.append(time.monotonic() - start)
        time.sleep(0.2)
    return out


def run(base: str, connections: int, seconds: float) -> dict[str, float | int]:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop, opened = threading.Event(), []  # type: ignore[var-annotated]
    threads = [threading.Thread(target=trickle, args=(host, port, stop, opened), daemon=True)
               for _ in range(connections)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # every slow client has connected and sent its first bytes
    lat = healthz_latencies(base, seconds)
    stop.set()
    lat.sort()
    return {"connections": len(opened), "requests": len(lat),
            "max_s": round(lat[-1], 3), "p50_s": round(lat[len(lat) // 2], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    print(json.dumps(run(args.url.rstrip("/"), args.connections, args.seconds)))


if __name__ == "__main__":
    main()
