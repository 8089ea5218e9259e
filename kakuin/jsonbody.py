"""Flask reads every JSON body with ``ca.strictjson`` (duplicates, NaN, depth, UTF-8, ...).

Installed by ``create_app`` as the app's JSON provider, so ``request.get_json()`` anywhere
(CA API, CSC API, future endpoints) is strict without each handler remembering to be.
A refusal is raised as :class:`ca.strictjson.BadJSON`, which is not a ``ValueError``: even
``get_json(silent=True)`` cannot quietly turn a refused body into ``None`` or a last-wins
object. Blueprints render it in their own error format (problem+json, CSC JSON).
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from ca import strictjson


class StrictJSONProvider(DefaultJSONProvider):
    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strictjson.loads(s)
