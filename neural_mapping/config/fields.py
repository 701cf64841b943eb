"""How a config field is declared (:func:`param`: default, help, unit, range or choices) and how
a value given as text, YAML or a ROS parameter becomes that field's type (:func:`coerce`)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Optional, Sequence


def param(default: Any, help: str, *, unit: str = "", lo: Optional[float] = None,
          hi: Optional[float] = None, choices: Optional[Sequence[Any]] = None):
    """Declare a config field with its documentation and valid range."""
    return field(default=default, metadata={
        "help": help, "unit": unit, "lo": lo, "hi": hi,
        "choices": tuple(choices) if choices is not None else None})


def field_type(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, type) else {"float": float, "int": int, "bool": bool,
                                                 "str": str}[str(f.type)]
    return t


def coerce(f: dataclasses.Field, value: Any) -> Any:
    t = field_type(f)
    if t is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{f.name}: expected a boolean, got {value!r}")
        if isinstance(value, (bool, int)):
            return bool(value)
        raise ValueError(f"{f.name}: expected a boolean, got {value!r}")
    if t is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{f.name}: expected an integer, got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, bool):
            raise ValueError(f"{f.name}: expected a number, got {value!r}")
        return float(value)
    return str(value)


def check_value(f: dataclasses.Field, value: Any) -> None:
    md = f.metadata
    unit = f" {md['unit']}" if md.get("unit") else ""
    if md.get("choices") is not None and value not in md["choices"]:
        raise ValueError(f"{f.name}={value!r} is not one of {list(md['choices'])}")
    if md.get("lo") is not None and value < md["lo"]:
        raise ValueError(f"{f.name}={value}{unit} is below its minimum {md['lo']}{unit}")
    if md.get("hi") is not None and value > md["hi"]:
        raise ValueError(f"{f.name}={value}{unit} is above its maximum {md['hi']}{unit}")
    if isinstance(value, float) and value != value:
        raise ValueError(f"{f.name} is NaN")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")
