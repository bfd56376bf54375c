"""A wasmhook filter plugin in Python, built with componentize-py.

Keeps the messages whose JSON value has a top-level field (config key
`field`, default `keep`) equal to `true`. Messages that are not JSON objects
are dropped. The host calls `init` once, then `filter` once per batch.
"""

import json
from typing import List, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

# componentize-py may create a new `WitWorld` object per call, so state set
# by `init` lives at module level.
_field = "keep"


class WitWorld(wit_world.WitWorld):
    def init(self, config: List[Tuple[str, str]]) -> None:
        global _field
        for key, value in config:
            if key == "field":
                if not value:
                    raise Err("`field` must not be empty")
                _field = value
            else:
                raise Err(f"unknown config key `{key}` (expected: field)")

    def filter(self, batch: List[types.Message]) -> List[bool]:
        return [_keeps(message.value) for message in batch]


def _keeps(value: bytes) -> bool:
    try:
        doc = json.loads(value)
    except ValueError:  # includes UnicodeDecodeError
        return False
    return isinstance(doc, dict) and doc.get(_field) is True
