"""Options are defined once, as dataclasses; this turns a dataclass into argparse flags and back."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--dash-name` flag per field of `cls`; help comes from `field(metadata={"help": ...})`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        origin = typing.get_origin(kind)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if origin is typing.Union or origin is types.UnionType:
            kind = args[0]
        elif origin is list:
            kwargs["nargs"] = "*"
            kind = args[0]
        parser.add_argument(flag, type=kind, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build `cls` from the parsed flags (fields absent from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
