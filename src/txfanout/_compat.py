"""What Python 3.9 (Debian's pypy3) lacks from 3.11, in one place.

Delete this module, and import ``tomllib`` directly, once 3.9 is dropped.
"""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published as tomli before it joined the stdlib
    import tomli as tomllib

#: ``@dataclass(**SLOTS)``: slotted where dataclass supports it (3.10+).
#: PyPy gives every instance a compact layout (maps) either way.
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

__all__ = ["SLOTS", "tomllib"]
