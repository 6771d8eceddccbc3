"""One config schema for the command line, sweeps and notebooks.

Implements STYLE.md habit 6 and DESIGN.md "Results, runs and figures": an experiment's
config is a frozen keyword-only dataclass subclassing `Config`; each field's help text is
`field(metadata={"help": ...})`; validation lives in the subclass's `__post_init__`;
unknown keys fail loudly; the same object serialises to JSON for `config.json`.

    @dataclass(frozen=True, kw_only=True)
    class SteerConfig(Config):
        layer: int = field(default=3, metadata={"help": "layer to steer at"})
        alphas: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "..."})

    cfg = SteerConfig.parse_args()             # --layer 4 --alphas 0.5,1,2
    cfg = SteerConfig.from_dict({"layer": 4})  # sweeps, notebooks
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self, Union

__all__ = ["Config", "ConfigError"]

_PASSED_ATTR = "_passed"
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "1", "on")
_FALSE_WORDS = ("false", "no", "0", "off")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class of experiment configs; subclasses are `@dataclass(frozen=True, kw_only=True)`."""

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        """The dataclass fields that make up the config, in declaration order."""
        return tuple(f for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Resolved type of each field (string annotations evaluated)."""
        return _field_types(cls)

    # -- dictionaries and JSON -------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Build a config from a mapping, converting each value to its field's type.

        Unknown keys raise `ConfigError` naming the key and listing the valid ones; missing
        required fields raise too. The keys given are remembered as "passed" (see `passed`).
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict needs a mapping, got {type(d).__name__}")
        valid = [f.name for f in cls.fields()]
        unknown = [k for k in d if k not in valid]
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} for {cls.__name__}; valid keys: {', '.join(valid)}")
        missing = [
            f.name
            for f in cls.fields()
            if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{cls.__name__} needs a value for {', '.join(missing)}")
        types_ = cls.field_types()
        values = {k: _convert(v, types_[k], f"{cls.__name__}.{k}") for k, v in d.items()}
        config = cls(**values)
        object.__setattr__(config, _PASSED_ATTR, _to_jsonable(values))
        return config

    def to_dict(self) -> dict[str, Any]:
        """Every field (defaults included) as JSON-serialisable values."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in self.fields()}

    def passed(self) -> dict[str, Any]:
        """The fields the user gave, as JSON-serialisable values.

        Exactly the keys given to `from_dict`/`from_argparse`/`parse_args`; for a config
        built by calling the class directly, the fields that differ from their defaults.
        """
        recorded = getattr(self, _PASSED_ATTR, None)
        if recorded is not None:
            return dict(recorded)
        passed = {}
        for f in self.fields():
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                passed[f.name] = _to_jsonable(value)
                continue
            if _to_jsonable(value) != _to_jsonable(default):
                passed[f.name] = _to_jsonable(value)
        return passed

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))

    # -- command line -----------------------------------------------------------------------

    @classmethod
    def add_to_argparse(cls, parser: argparse.ArgumentParser, prefix: str = "") -> None:
        """Add one `--field-name` option per field (nested configs as `--outer.field-name`).

        Bools become `--flag/--no-flag`; lists and tuples take several values or one
        comma-separated value; dicts take JSON; `none` sets an Optional field to None.
        Options left off the command line stay unset, so `from_argparse` knows what was passed.
        """
        for f in cls.fields():
            tp = cls.field_types()[f.name]
            dest = f"{prefix}{f.name}"
            inner = _strip_optional(tp)
            if isinstance(inner, type) and issubclass(inner, Config):
                inner.add_to_argparse(parser, prefix=f"{dest}.")
                continue
            flag = "--" + dest.replace("_", "-")
            help_text = f.metadata.get("help", "")
            sequence = typing.get_origin(inner) in (list, tuple, set, frozenset) and typing.get_args(inner)
            options = _choices(_strip_optional(typing.get_args(inner)[0] if sequence else inner))
            if options:
                help_text = f"{help_text}; choices: {', '.join(options)}".lstrip("; ")
            default = _default_text(f)
            if default is not None:
                help_text = f"{help_text} (default: {default})".strip()
            kwargs: dict[str, Any] = {
                "dest": dest,
                "default": argparse.SUPPRESS,
                "help": help_text.replace("%", "%%"),
            }
            if inner is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(inner) in (list, tuple, set, frozenset):
                kwargs["nargs"] = "+"
                kwargs["metavar"] = f.name.upper()
            else:
                kwargs["metavar"] = f.name.upper()
                choices = _choices(inner)
                if choices is not None:
                    kwargs["choices"] = choices + (list(_NONE_WORDS) if inner is not tp else [])
            parser.add_argument(flag, **kwargs)

    @classmethod
    def from_argparse(cls, namespace: argparse.Namespace) -> Self:
        """Build the config from a namespace filled by a parser set up with `add_to_argparse`."""
        nested: dict[str, Any] = {}
        for dest, value in vars(namespace).items():
            keys = dest.split(".")
            if keys[0] not in {f.name for f in cls.fields()}:
                continue
            target = nested
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value
        return cls.from_dict(nested)

    @classmethod
    def parse_args(cls, argv: Sequence[str] | None = None) -> Self:
        """Parse `argv` (default `sys.argv[1:]`) into this config; `--help` lists every field."""
        parser = argparse.ArgumentParser(description=(cls.__doc__ or "").strip() or None)
        cls.add_to_argparse(parser)
        return cls.from_argparse(parser.parse_args(argv))


# -- conversion --------------------------------------------------------------------------------


@functools.cache
def _field_types(cls: type[Config]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in cls.fields()}


def _strip_optional(tp: Any) -> Any:
    """`X | None` -> `X`; anything else unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _choices(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(m.value) for m in tp]
    return None


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return json.dumps(_to_jsonable(value))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` to type `tp` or raise ConfigError naming `where`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (Union, types.UnionType):
        allows_none = type(None) in args
        if value is None and allows_none:
            return None
        if allows_none and isinstance(value, str) and value.lower() in _NONE_WORDS and str not in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}: " + "; ".join(errors))

    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")

    if origin in (list, set, frozenset, tuple):
        items = _as_sequence(value, where)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(items) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values for {tp}, got {len(items)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args, strict=False)))
        item_tp = args[0] if args else Any
        converted = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(items)]
        return origin(converted)

    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: expected a JSON object, got {value!r} ({e})") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        key_tp, value_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, f"{where} key"): _convert(v, value_tp, f"{where}[{k!r}]") for k, v in value.items()}

    if not isinstance(tp, type):
        raise ConfigError(f"{where}: type {tp} is not supported by Config; use a simpler type")

    if issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            try:
                return tp.from_dict(value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.lower() in _TRUE_WORDS
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or value == member.name or value == str(member.value):
                return member
        raise ConfigError(f"{where}: {value!r} is not one of {[m.value for m in tp]}")
    raise ConfigError(f"{where}: type {tp.__name__} is not supported by Config; use a simpler type")


def _as_sequence(value: Any, where: str) -> list[Any]:
    """Lists as given; strings split on commas (the command-line form `1,2,3`)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        # One command-line token may itself be comma-separated: `--layers 1,2 3`.
        items: list[Any] = []
        for v in value:
            if isinstance(v, str) and "," in v:
                items.extend(_as_sequence(v, where))
            else:
                items.append(v)
        return items
    raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value
