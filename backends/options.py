"""Reading a backend's ``Backend`` options as Go's JSON decoder does: keys case-insensitive,
values of the wrong type or range refused with an error naming ``Backend.<Option>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flanneld.errors import NetworkConfigError


class OptionReader:
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.fields = {k.lower(): v for k, v in options.items()}

    def integer(self, key: str, name: str, default: int, low: int, high: int) -> int:
        """``key`` (lower case) as an integer ``low..high``; ``default`` when absent/null."""
        value = self.fields.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise NetworkConfigError(f"Backend.{name}", f"must be an integer {low}..{high}, "
                                     f"got {value!r:.40}")
        return value

    def flag(self, key: str, name: str) -> bool:
        value = self.fields.get(key, False)
        if not isinstance(value, bool):
            raise NetworkConfigError(f"Backend.{name}", f"must be true or false, got {value!r:.40}")
        return value
