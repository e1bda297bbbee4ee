"""The options contract: every option is defined once, as a dataclass field made with `opt(...)`.

A field carries its flag, default, help and validation rules. From it come the argparse flags
(`add_dataclass_arguments`), the options object (`dataclass_from_args`, which validates before any work
starts), the docs tables (`options_table`) and what a checkpoint saves (`dataclasses.asdict`).

Options shared by several commands live in small group dataclasses (device, decoding, optimiser, ...) that a
command's options class inherits, so each flag is written once and attributes stay flat (`opts.device`).

Rules (all optional): `choices`, `min` (>=), `max` (<=), `gt` (>), `lt` (<), `allow` (values exempt from the
range, such as -1 for "no limit"), `check` (a function returning an error tail or None).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from imcap.errors import ImcapError

T = TypeVar("T")
EXPLICIT = "_explicit_options"  # namespace attribute: the dests the user typed


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None, max: float | None = None,
        gt: float | None = None, lt: float | None = None, allow: tuple = (), check: Callable[[Any], str | None] | None = None,
        flag: str | None = None, short: str | None = None, metavar: str | None = None, positional: bool = False,
        required: bool = False, cli: bool = True) -> Any:
    """A dataclass field with its flag, help and validation rules in one place."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "gt": gt, "lt": lt, "allow": tuple(allow), "check": check,
            "flag": flag, "short": short, "metavar": metavar, "positional": positional, "required": required, "cli": cli}
    flags = {"positional": positional, "required": required, "cli": cli}
    meta = {k: v for k, v in meta.items() if k not in flags and v is not None and v != ()}
    meta.update(flags)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def redefault(cls: type, name: str, default: Any, help: str | None = None, **rules: Any) -> Any:
    """The field `name` of the group `cls` with another default (and help, or rules): for a command whose default differs."""
    base = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**base.metadata, **rules}
    if help is not None:
        meta["help"] = help
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field (`--batch-size`), or its positional name."""
    if f.metadata.get("positional"):
        return f.name.upper()
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


class _Store(argparse._StoreAction):
    """argparse's store action that also records that the user typed the flag."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.__dict__.setdefault(EXPLICIT, set()).add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Bool(argparse.BooleanOptionalAction):
    """`--flag / --no-flag` that records that the user typed it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.__dict__.setdefault(EXPLICIT, set()).add(self.dest)
        super().__call__(parser, namespace, values, option_string)


def _scalar_type(kind: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a field annotation such as `int`, `str | None` or `list[str]`."""
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin is typing.Union or origin is types.UnionType:
        return _scalar_type(args[0])
    if origin is list:
        return args[0], True
    return kind, False


def _number(kind: Any) -> Callable[[str], Any]:
    """A parser for int/float flags whose error names the value (`'abc' is not a whole number`)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per option field of `cls` (help, default and rules from the field)."""
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls):
        default = _default(f)
        kind, is_list = _scalar_type(hints[f.name])
        meta = f.metadata
        help_text = meta.get("help", "")
        if not meta.get("required") and not meta.get("positional") and default not in ("", None, []):
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"default": default, "help": help_text.replace("%", "%%")}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        elif "choices" in meta:
            kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="+" if is_list else None, type=kind, action=_Store, **kwargs)
            continue
        names = [flag_of(f)] + ([meta["short"]] if meta.get("short") else [])
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action=_Bool, **kwargs)
            continue
        if is_list:
            kwargs["nargs"] = "+"
        if meta.get("required"):
            kwargs["required"] = True
        parser.add_argument(*names, dest=f.name, type=_number(kind) if kind in (int, float) else kind, action=_Store, **kwargs)


def explicit_options(args: argparse.Namespace) -> set[str]:
    """The option names (field names) the user typed on the command line."""
    return set(getattr(args, EXPLICIT, set()))


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build and validate `cls` from parsed flags (fields absent from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    obj = cls(**values)
    validate(obj)
    return obj


def _describe_range(meta: dict) -> str:
    parts = []
    for key, sign in (("gt", ">"), ("min", ">="), ("lt", "<"), ("max", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sign} {meta[key]}")
    text = " and ".join(parts)
    if meta.get("allow"):
        text += " or " + " or ".join(map(str, meta["allow"]))
    return text


def field_error(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` breaks the rules of field `f` (None when it is fine); a required option may not be empty."""
    meta = f.metadata
    flag = flag_of(f)
    if (meta.get("required") or meta.get("positional")) and value in ("", []):
        return f"{flag} must not be empty"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"{flag} must be one of {', '.join(map(str, choices))} (got {value!r})"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in meta.get("allow", ()):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{flag} must be a finite number (got {value})"
        bad = ((meta.get("gt") is not None and not value > meta["gt"]) or (meta.get("min") is not None and not value >= meta["min"])
               or (meta.get("lt") is not None and not value < meta["lt"]) or (meta.get("max") is not None and not value <= meta["max"]))
        if bad:
            return f"{flag} must be {_describe_range(meta)} (got {value})"
    check = meta.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            return f"{flag} {problem}"
    return None


def validate(obj: Any) -> None:
    """Raise a one-line ImcapError naming the first option whose value breaks its rules."""
    for f in dataclasses.fields(obj):
        problem = field_error(f, getattr(obj, f.name))
        if problem:
            raise ImcapError(problem)


def options_table(cls: type) -> str:
    """A Markdown table of the options of `cls`: flag, default, allowed values, meaning."""
    rows = ["| option | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for f in cli_fields(cls):
        meta = f.metadata
        flag = flag_of(f) + (f", {meta['short']}" if meta.get("short") else "")
        hints = typing.get_type_hints(cls)
        if hints[f.name] is bool and not meta.get("positional"):
            flag = f"{flag_of(f)} / --no-{flag_of(f)[2:]}"
        default = "(required)" if meta.get("required") or meta.get("positional") else meta.get("doc_default") or f"`{_default(f)}`"
        allowed = ", ".join(map(str, meta["choices"])) if meta.get("choices") else _describe_range(meta)
        rows.append(f"| `{flag}` | {default} | {allowed} | {meta.get('help', '').replace('|', '/')} |")
    return "\n".join(rows) + "\n"
