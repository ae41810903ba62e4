"""Labels sent back, as clients send them: `{"id": "<request id>", "labels": [v0, v1, ...]}`
(one label per row of that request, in row order), or a JSON array of such objects.

`parse` keeps the good objects and says what is wrong with each bad one; one bad object
never costs the good ones of the same body. What a label may be depends on the task:
binary 0 or 1, multiclass a class index (0, 1, ...), regression any finite number.
The id is a string, or an integer (taken as its digits: an event scored from Kafka with
`"id": 17` is labelled by `"id": 17` or `"id": "17"`).
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from engine.errors import MAX_ECHO, clip
from engine.performance.labels import Labels

MAX_ID = 1024  # characters of a request id
MAX_LABELS = 1_000_000  # labels in one object


def _label_error(value, task: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"a label is {clip(orjson.dumps(value).decode(), MAX_ECHO)}, not a number"
    if not math.isfinite(value):
        return "a label is not finite"
    if task == "binary" and value not in (0, 1):
        return f"a label is {value}; binary labels are 0 or 1"
    if task == "multiclass" and (value < 0 or value != int(value)):
        return f"a label is {value}; multiclass labels are class indices 0, 1, ..."
    return None


def _object_error(item, task: str) -> str | None:
    if not isinstance(item, dict):
        return 'not an object {"id": ..., "labels": [...]}'
    rid, labels = item.get("id"), item.get("labels")
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid:
        return 'no "id" (the request id: a string, or an integer)'
    if len(rid) > MAX_ID:
        return f'"id" is {len(rid)} characters, more than {MAX_ID}'
    if not isinstance(labels, list) or not labels:
        return f'request {clip(rid)!r}: no "labels" (a list, one label per row of the request)'
    if len(labels) > MAX_LABELS:
        return f"request {clip(rid)!r}: {len(labels)} labels, more than {MAX_LABELS}"
    extra = sorted(set(item) - {"id", "labels"})
    if extra:
        return f"request {clip(rid)!r}: unknown field {clip(extra[0])!r}"
    for value in labels:
        error = _label_error(value, task)
        if error is not None:
            return f"request {clip(rid)!r}: {error}"
    return None


def parse(body: bytes, model: str, task: str) -> tuple[Labels | None, list[tuple[int, str]]]:
    """(the good objects' labels, or None when there is none; [(index, error)] of the bad)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, [(0, f"the body is not JSON: {clip(str(exc))}")]
    items = document if isinstance(document, list) else [document]
    ids, values, errors = [], [], []
    for index, item in enumerate(items):
        error = _object_error(item, task)
        if error is not None:
            errors.append((index, error))
            continue
        ids.append(str(item["id"]))
        values.append(item["labels"])
    if not ids:
        return None, errors
    counts = np.array([len(v) for v in values], dtype=np.int64)
    return Labels(model, tuple(ids), counts, np.array([x for v in values for x in v], dtype=np.float64)), errors
