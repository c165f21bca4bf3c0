"""Typed dataclasses checked against plain data (JSON records, YAML config).

One checker serves both: a dataclass declares its fields with type hints, and
`build` turns a dict into an instance or raises SchemaError naming the key path
("repos.demo.resource_limits.memory") and what was expected. Extra checks ride
on typing.Annotated: Match (regex), Range, Size, OneOf, Secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Annotated, Any, Union

from airut_core.secrets import NAME as SECRET_NAME
from airut_core.secrets import Sealed, SecretRef


class SchemaError(ValueError):
    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class EnvRef:
    """A value to be read from the environment (`!env NAME` in YAML)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"!env {self.name}"

    def resolve(self, path: str) -> str:
        try:
            return os.environ[self.name]
        except KeyError:
            raise SchemaError(path, f"environment variable {self.name} is not set") from None


class Secret:
    """Annotated marker: the value may be `!secret NAME`, kept sealed (secrets.Sealed)
    until the process that needs it unseals it."""


@dataclasses.dataclass(frozen=True)
class Match:
    pattern: re.Pattern
    what: str

    def check(self, value: Any, path: str) -> Any:
        if not self.pattern.match(value):
            raise SchemaError(path, f"not a valid {self.what}: {value!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Range:
    min: float | None = None
    max: float | None = None

    def check(self, value: Any, path: str) -> Any:
        if self.min is not None and value < self.min:
            raise SchemaError(path, f"must be at least {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise SchemaError(path, f"must be at most {self.max}, got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class OneOf:
    values: tuple

    def check(self, value: Any, path: str) -> Any:
        if value not in self.values:
            raise SchemaError(path, f"must be one of {', '.join(map(str, self.values))}, "
                                    f"got {value!r}")
        return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Size:
    """A byte count written as 512M, 2G, 1.5GiB or a plain integer. Checked as int."""

    @staticmethod
    def parse(value: Any, path: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        m = _SIZE.match(str(value))
        if not m:
            raise SchemaError(path, f"expected a size like 512M or 2G, got {value!r}")
        return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def count(value: Any, maximum: int = 1 << 53) -> int | None:
    """A non-negative integer from someone else's bytes, or None (booleans and numbers
    in strings are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum:
        return value
    return None


def build(cls: type, data: Any, path: str = "") -> Any:
    """Check data against dataclass cls and return an instance."""
    if not isinstance(data, dict):
        raise SchemaError(path, f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise SchemaError(path, f"unknown key{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(unknown)} (known: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            values[name] = convert(hints[name], data[name], sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(sub, "required key is missing")
    return cls(**values)


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check (and where declared, convert) one value against a type hint."""
    checks: tuple = ()
    if typing.get_origin(tp) is Annotated:
        tp, *extra = typing.get_args(tp)
        checks = tuple(extra)
    if isinstance(value, EnvRef):
        value = value.resolve(path)
    if isinstance(value, SecretRef) and Secret in checks:
        if not SECRET_NAME.match(value.name):
            raise SchemaError(path, f"{value!r}: a secret's name is letters, digits, _ . - "
                                    "(it names a file in /etc/airut/credentials)")
        return Sealed(value.name, path)
    if Size in checks:
        value = Size.parse(value, path)
    value = _convert_type(tp, value, path)
    for check in checks:
        if check not in (Size, Secret) and value is not None:
            value = check.check(value, path)
    return value


def _convert_type(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except SchemaError as e:
                errors.append(e.message)
        raise SchemaError(path, " or ".join(errors))
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, got {_kind(value)}")
        (item,) = typing.get_args(tp)
        return [convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping, got {_kind(value)}")
        key_tp, item = typing.get_args(tp)
        return {convert(key_tp, k, f"{path}.{k}"): convert(item, v, f"{path}.{k}")
                for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if isinstance(value, SecretRef):
            raise SchemaError(path, f"{value!r}: a secret can be named only where a password "
                                    "or a secret value goes")
        if type(value) is not tp:
            raise SchemaError(path, f"expected {_NAMES[tp]}, got {_kind(value)}")
        return value
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)
