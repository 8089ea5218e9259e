"""What the gevent worker needs beyond gunicorn's monkey-patching.

pyHanko is asyncio inside: sealing and verification call ``asyncio.run``. asyncio keeps its
running loop per OS thread, and under gevent every request is a greenlet of one thread: when
one request's loop waits (a fetch, a sleep) and the hub switches to another request that calls
``asyncio.run``, that one fails with "asyncio.run() cannot be called from a running event loop"
(measured: 3 of 4 concurrent runs). So in a gevent worker ``asyncio.run`` takes a gevent lock:
one event loop at a time per worker; other greenlets (OCSP, TSA, /healthz) keep running while
it waits, and the work itself is CPU-bound, so little is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

_ORIGINAL_RUN: Callable[..., Any] = asyncio.run


def serialise_asyncio_run() -> None:
    """Make ``asyncio.run`` one-at-a-time across the greenlets of this process (idempotent)."""
    if getattr(asyncio.run, "_kakuin_serialised", False):
        return
    from gevent.lock import Semaphore

    gate = Semaphore(1)

    def run(main: Any, **kwargs: Any) -> Any:
        with gate:
            return _ORIGINAL_RUN(main, **kwargs)

    run._kakuin_serialised = True  # type: ignore[attr-defined]
    asyncio.run = run


def in_gevent_worker() -> bool:
    """True once gevent has monkey-patched this process (as gunicorn's gevent worker does)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))
