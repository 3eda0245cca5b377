"""Versioned JSON Schemas of everything crowdstream publishes (Redis streams, pub/sub, webhooks).

Each message carries ``"schema": "crowdstream.<kind>.v<N>"``; the file ``<kind>.v<N>.json`` in this
package describes it. A breaking change gets a new version and a new file; old files stay.

Example::

    from pipeline.schema import validate
    validate(envelope)  # raises jsonschema.ValidationError naming the bad field
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS = ("count.v1", "heatmap.v1", "status.v1", "alert.v1", "notify.v1")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema for ``"crowdstream.count.v1"`` or ``"count.v1"``."""
    short = name.removeprefix("crowdstream.")
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
