"""Versioned JSON Schemas of everything crowdstream publishes (Redis streams, pub/sub, webhooks,
JSON lines), and their names as constants: code that writes or reads a message names its schema
through these, never as a string literal.

Each message carries ``"schema": "crowdstream.<kind>.v<N>"``; the file ``<kind>.v<N>.json`` in this
package describes it. A breaking change gets a new version and a new file; old files stay.
``pipeline.envelopes`` builds every message; this package only names and checks them.

Example::

    from pipeline.schema import COUNT_SCHEMA, validate
    validate(envelope)  # raises jsonschema.ValidationError naming the bad field
    if envelope["schema"] == COUNT_SCHEMA: ...
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

PREFIX = "crowdstream."
COUNT_SCHEMA = "crowdstream.count.v1"  # one frame's count (Redis counts stream, JSON lines)
HEATMAP_SCHEMA = "crowdstream.heatmap.v1"  # one stored heatmap (Redis hash with a TTL)
STATUS_SCHEMA = "crowdstream.status.v1"  # a camera changed state (Redis status stream, JSON lines)
ALERT_SCHEMA = "crowdstream.alert.v1"  # an alert started / changed / ended (Redis, webhook)
NOTIFY_SCHEMA = "crowdstream.notify.v1"  # small live notification (Redis pub/sub)
SNAPSHOT_SCHEMA = "crowdstream.snapshot.v1"  # a JPEG of a counted frame (Redis hash with a TTL)
ROLLUP_SCHEMA = "crowdstream.rollup.v1"  # counts summarised over a window (Redis stream)
CONTROL_SCHEMA = "crowdstream.control.v1"  # a request to running pipelines, or a reply

SCHEMAS = tuple(name.removeprefix(PREFIX) for name in
                (COUNT_SCHEMA, HEATMAP_SCHEMA, STATUS_SCHEMA, ALERT_SCHEMA, NOTIFY_SCHEMA,
                 SNAPSHOT_SCHEMA, ROLLUP_SCHEMA, CONTROL_SCHEMA))


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema for ``"crowdstream.count.v1"`` or ``"count.v1"``."""
    short = name.removeprefix(PREFIX)
    if short not in SCHEMAS:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMAS)}")
    text = resources.files(__name__).joinpath(f"{short}.json").read_text()
    return json.loads(text)


def validate(doc: dict[str, Any]) -> None:
    """Validate a published document against the schema its ``schema`` field names."""
    import jsonschema

    name = doc.get("schema")
    if not isinstance(name, str):
        raise ValueError(f"document has no 'schema' field: {str(doc)[:200]}")
    jsonschema.validate(doc, load_schema(name))


__all__ = ["ALERT_SCHEMA", "CONTROL_SCHEMA", "COUNT_SCHEMA", "HEATMAP_SCHEMA", "NOTIFY_SCHEMA",
           "ROLLUP_SCHEMA", "SCHEMAS", "SNAPSHOT_SCHEMA", "STATUS_SCHEMA", "load_schema",
           "validate"]
