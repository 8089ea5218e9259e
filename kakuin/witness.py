"""Witnessing across regions: keep each trust-list peer's signed tree heads and check that
every new one extends the last we saw (RFC 9162 consistency). A region that rewrites its
history is caught by any region that saw an earlier head: alarm in the log, the metric
``kakuin_transparency_inconsistencies`` and the scheduler run's summary.

Heads are kept in HOME/trust/witness.json (per node: any node that saw a head can tell).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ca import transparency

log = logging.getLogger(__name__)


def _state_path(home: Path) -> Path:
    return home / "trust" / "witness.json"


def load(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(_state_path(home).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def refresh(home: Path, peers: Iterable[tuple[str, str]],
            get_json: Callable[[str], Any]) -> dict[str, str]:
    """Check every (name, base URL) peer once; name -> status. Never raises for a peer."""
    state = load(home)
    out = {}
    for name, base_url in peers:
        previous = state.get(name)
        try:
            kept, status = transparency.witness(base_url, previous, get_json)
        except Exception as exc:  # an unreachable peer is not an inconsistency
            kept, status = previous, f"unreachable: {type(exc).__name__}"
        if status.startswith(transparency.INCONSISTENT):
            log.error("transparency log of %s is inconsistent", name,
                      extra={"peer": name, "status": status})
            from kakuin import metrics  # late: the CLI must not load prometheus_client

            metrics.record_transparency_inconsistency(name)
        if kept is not None:
            state[name] = kept
        out[name] = status
    path = _state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
    return out
