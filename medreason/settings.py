"""`--NAME=value` overrides for the upper-case constants at the top of a script (nanoGPT's configurator, typed)."""
from __future__ import annotations

import ast
import difflib
import types
import typing

from .errors import UserError


class SettingsError(UserError):
    """A bad override: the message names the setting and says the fix."""


def collect(namespace: dict) -> dict:
    """The upper-case, non-callable, non-module constants of a script's globals, in definition order."""
    return {k: v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and not callable(v) and not isinstance(v, types.ModuleType)}


def _allowed_types(default, annotation) -> tuple[type, ...]:
    if annotation is not None:
        args = typing.get_args(annotation) or (annotation,)
        return tuple(type(None) if a is None else typing.get_origin(a) or a for a in args)
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (float, int)
    return (type(default),)


def _parse_value(raw: str):
    """A Python literal if it is one (1e-4, True, None, ['a','b']), else the raw string; true/false/none too."""
    lowered = raw.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # TypeError: {[]: 1}
        return raw


def _shown(raw: str) -> str:
    """The value as typed, or quoted and cut short when it would not fit on one line of an error message."""
    return raw if len(raw) <= 80 and raw.isprintable() else repr(raw[:80]) + ("…" if len(raw) > 80 else "")


def _coerce(name: str, raw: str, default, annotation):
    allowed = _allowed_types(default, annotation)
    value = _parse_value(raw)
    if list in allowed and isinstance(value, str):  # --TARGET_MODULES=q_proj,v_proj
        value = [part.strip() for part in value.split(",") if part.strip()]
    if float in allowed and type(value) is int:
        value = float(value)
    if type(value) not in allowed and str in allowed:  # text stays text: --OUTPUT_DIR=2024 is "2024"
        value = raw
    if type(value) not in allowed:
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise SettingsError(f"--{name}={_shown(raw)}: expected {names} (the default is {default!r}). "
                            f"Fix: pass a value of that type, e.g. --{name}={default!r}.")
    return value


def parse_overrides(argv: list[str], defaults: dict, annotations: dict | None = None) -> dict:
    """Turn ['--MAX_STEPS=10', ...] into {'MAX_STEPS': 10}, checked against the defaults' types."""
    annotations = annotations or {}
    overrides = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SettingsError(f"{arg[:80]!r}{'…' if len(arg) > 80 else ''}: settings are given as --NAME=value, "
                                f"e.g. --MAX_STEPS=50.")
        name, raw = arg[2:].split("=", 1)
        if name not in defaults:
            close = difflib.get_close_matches(name.upper(), list(defaults), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
            raise SettingsError(f"Unknown setting --{_shown(name)}.{hint} The settings are the upper-case "
                                f"constants at the top of the script: {', '.join(defaults)}.")
        overrides[name] = _coerce(name, raw, defaults[name], annotations.get(name))
    return overrides


def resolve(namespace: dict, argv: list[str]) -> tuple[types.SimpleNamespace, set[str]]:
    """The script's settings with command-line overrides applied, and the names the user overrode."""
    defaults = collect(namespace)
    overrides = parse_overrides(argv, defaults, namespace.get("__annotations__", {}))
    return types.SimpleNamespace(**{**defaults, **overrides}), set(overrides)
