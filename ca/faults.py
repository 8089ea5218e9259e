"""Named pause points for the crash tests (tests/test_crash.py), inert in production.

A crash test must kill a worker *exactly* between two steps of an operation (after the
HSM signed, before the certificate is stored, ...). Polling the database cannot hit a
window of a few milliseconds, so the code marks its crash points with :func:`pause_point`.

Only when the environment variable ``KAKUIN_TEST_PAUSE_DIR`` names a directory AND that
directory holds a file named after the point does a process stop there: it deletes the file
(so exactly one process claims it), writes its pid to ``<point>.pid`` and sleeps until it is
killed (at most ``PAUSE_SECONDS``, then it carries on as if nothing happened). Without the
variable a pause point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "KAKUIN_TEST_PAUSE_DIR"
PAUSE_SECONDS = 120.0


def pause_point(name: str) -> None:
    directory = os.environ.get(ENV)
    if not directory:
        return
    trigger = Path(directory) / name
    try:
        trigger.unlink()
    except FileNotFoundError:
        return
    (Path(directory) / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(PAUSE_SECONDS)
