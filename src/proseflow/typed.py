"""Typed configuration values: a config mapping -> a dataclass, with every key and type checked and named.

Standard library only: the settings layer that builds the Snakemake DAG uses it, so a typo or a wrong type in
``config.yaml`` fails ``snakemake -n`` with the key's full path, not a training job hours later.

    build(TrainConfig, {"lrr": 1e-3}, "train")
    -> ConfigTypeError: train.lrr: unknown key; did you mean train.lr?
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union

# What PyYAML (YAML 1.1) reads as a string although a person meant a number: 1e-3, 5E4, -2e+1 (no dot).
_YAML_FLOAT_AS_TEXT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


class ConfigTypeError(ValueError):
    """A configuration key that does not exist, or a value of the wrong type or out of range."""


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """"; did you mean <nearest>?" or "" (difflib's closest valid name)."""
    close = difflib.get_close_matches(str(key), sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_key(path: str, key: str, valid: Iterable[str]) -> ConfigTypeError:
    valid = sorted(valid)
    prefix = f"{path}." if path else ""
    hint = did_you_mean(key, valid)
    if hint:
        hint = f"; did you mean {prefix}{hint[len('; did you mean '):]}"
    return ConfigTypeError(f"{prefix}{key}: unknown key{hint} (valid: {', '.join(valid)})")


def yaml_number_hint(value: Any) -> str:
    """Why a number came through as text, and how to write it (PyYAML reads 1e-3 without a dot as a string)."""
    if isinstance(value, str) and _YAML_FLOAT_AS_TEXT.fullmatch(value.strip()):
        mantissa, exponent = re.split("[eE]", value.strip())
        return (f" (YAML reads {value} without a decimal point as text: write {mantissa}.0e{exponent} "
                f"or {float(value)!r})")
    return ""


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if hint in names:
        return names[hint]
    if hint in (tuple, list) or origin in (tuple, list, Sequence):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    return str(hint)


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML/JSON gives it) fits the type annotation ``hint``."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if hint in (list, tuple) or origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        return all(matches(v, item) for v in value)
    return True  # an annotation this checker does not know: the dataclass's own checks decide


def check_fields(cls: type, data: Mapping, path: str, exclude: Iterable[str] = ()) -> None:
    """Every key of ``data`` is a field of dataclass ``cls`` (not in ``exclude``) and fits its type."""
    if not isinstance(data, Mapping):
        raise ConfigTypeError(f"{path}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - set(exclude)
    prefix = f"{path}." if path else ""
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(path, key, fields)
        if not matches(value, hints[key]):
            raise ConfigTypeError(f"{prefix}{key}: expected {_describe(hints[key])}, got {value!r}"
                                  f"{yaml_number_hint(value)}")


def build(cls: type, data: Mapping, path: str, exclude: Iterable[str] = (), **extra):
    """``cls(**data, **extra)`` after :func:`check_fields`; the dataclass's own range checks (ValueError in its
    ``__post_init__``) come back as :class:`ConfigTypeError` prefixed with ``path``."""
    check_fields(cls, data, path, exclude)
    try:
        return cls(**{**data, **extra})
    except (ValueError, TypeError) as err:
        msg = str(err)
        raise ConfigTypeError(msg if msg.startswith(f"{path}.") else f"{path}: {msg}") from None
