"""The one place settings are layered: the constants at the top of a script, then a preset file, then the
command line (nanoGPT's configurator, typed; presets are axolotl/LLaMA-Factory-style YAML files of constants).

    python medical_fine_tuning.py --PRESET=llama-3.1-8b --MAX_STEPS=60   # configs/llama-3.1-8b.yaml, then the flag
    python medical_fine_tuning.py --PRESET=path/to/mine.yaml

Every value's origin is kept ("preset demo", "command line", ...) so the printed settings say where each came from.
The result is frozen (Settings): run_plan.settle makes the automatic choices on the Draft, then nothing changes a
setting.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from medreason.config.errors import UserError

PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"
COMMAND_LINE = "command line"
EMBEDDED = "embedded"  # the MODEL_NAME of the model shipped inside a package (model/embedded.py); picks the demo preset


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


def _coerce(name: str, raw: str, default, annotation, shown: str | None = None):
    """A text value (command line, or a YAML string) as the setting's type; `shown` names where it came from."""
    value = _parse_value(raw)
    allowed = _allowed_types(default, annotation)
    if list in allowed and isinstance(value, str):  # --TARGET_MODULES=q_proj,v_proj
        value = [part.strip() for part in value.split(",") if part.strip()]
    if type(value) not in allowed and str in allowed:  # text stays text: --OUTPUT_DIR=2024 is "2024"
        value = raw
    return _checked(name, value, default, annotation, shown or f"--{name}={_shown(raw)}", f"--{name}={default!r}")


def _checked(name: str, value, default, annotation, shown: str, example: str):
    allowed = _allowed_types(default, annotation)
    if float in allowed and type(value) is int:
        value = float(value)
    if type(value) not in allowed or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise SettingsError(f"{shown}: expected {names} (the default is {default!r}). "
                            f"Fix: give a value of that type, e.g. {example}.")
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


@dataclass(frozen=True)
class Origin:
    """Where a setting's value came from: kind is "constant", "preset", "command line" or "automatic"; label is what
    the settings table prints after "<-" ("" for a script constant); reason is why an automatic choice was made."""
    kind: str
    label: str = ""
    reason: str = ""


THE_CONSTANT = Origin("constant")


class Settings:
    """A run's settings, resolved once and frozen: cfg.NAME reads a value, assigning raises
    dataclasses.FrozenInstanceError. Each script gets its own frozen dataclass of its constants (typed by their
    annotations, else their defaults' types); `origin(NAME)` says where a value came from, `choices` the printed lines
    of the automatic choices, in the order they were made."""
    _origins: Mapping[str, Origin] = MappingProxyType({})
    _choices: tuple[str, ...] = ()

    def origin(self, name: str) -> Origin:
        return self._origins.get(name, THE_CONSTANT)

    @property
    def origins(self) -> dict[str, str]:
        """{NAME: label} of every value the settings table marks (preset, command line, automatic)."""
        return {name: o.label for name, o in self._origins.items() if o.label}

    @property
    def choices(self) -> tuple[str, ...]:
        return self._choices

    def __reduce__(self):  # each run's class is made at run time: pickle (deepcopy, dill) rebuilds it from its parts
        types_ = {f.name: f.type for f in dataclasses.fields(self)}
        return _rebuild, (dict(vars(self)), dict(self._origins), types_, self._choices)


def _rebuild(values: dict, origins: dict, types_: dict, choices: tuple) -> Settings:
    draft = Draft(values, origins, types_)
    draft.lines = list(choices)
    return draft.freeze()


class Draft:
    """Settings while they are decided: layered here, then the run plan's automatic choices (run_plan.settle), then
    freeze(). Only resolve() and run_plan.settle hold one; nothing else sees settings before they are frozen."""

    def __init__(self, values: dict, origins: dict[str, Origin], types_: dict[str, object]):
        self.values, self._origin, self._types, self.lines = values, origins, types_, []

    def __getattr__(self, name: str):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def declares(self, name: str) -> bool:
        """Whether the script has this setting: a rule for a setting a script lacks does not apply to it."""
        return name in self.values

    def origin(self, name: str) -> Origin:
        return self._origin.get(name, THE_CONSTANT)

    def set_by_user(self, name: str) -> bool:
        """Given in a preset or on the command line: an automatic choice leaves it as it is."""
        return self.origin(name).kind in {"preset", COMMAND_LINE}

    def choose(self, name: str, value, label: str, reason: str) -> None:
        """An automatic choice: the value, the label the settings table prints, and why (kept as its origin)."""
        self.values[name] = value
        self._origin[name] = Origin("automatic", label, reason)

    def say(self, line: str) -> None:
        """A line printed under "Automatic choices" (each choice's reason, the effective batch), in order."""
        self.lines.append(line)

    def freeze(self) -> Settings:
        fields = [(name, self._types.get(name, typing.Any)) for name in self.values]
        cls = dataclasses.make_dataclass("Settings", fields, bases=(Settings,), frozen=True, namespace={
            "_origins": MappingProxyType(dict(self._origin)), "_choices": tuple(self.lines)})
        return cls(**self.values)


def _types_of(defaults: dict, annotations: dict) -> dict[str, object]:
    return {name: annotations.get(name, typing.Any if value is None else type(value))
            for name, value in defaults.items()}


def layer(namespace: dict, argv: list[str], automatic=None, preset_dir: Path = PRESET_DIR) -> Draft:
    """The script's settings, layered constants -> preset -> command line, each with its origin.

    The preset is PRESET (a constant, or --PRESET=...), a name in preset_dir (each script has its own folder: the
    trainer's is configs/) or a path; when neither names one, `automatic(values, given)` may choose one (e.g. the
    offline demo on a machine with no GPU) and returns (name, why) or None."""
    defaults = collect(namespace)
    annotations = namespace.get("__annotations__", {})
    overrides = parse_overrides(argv, defaults, annotations)
    origins: dict[str, Origin] = {}
    preset = overrides.get("PRESET", defaults.get("PRESET"))
    if preset:
        origins["PRESET"] = (Origin(COMMAND_LINE, COMMAND_LINE) if "PRESET" in overrides
                             else Origin("constant", "the constant"))
    elif automatic:
        chosen = automatic({**defaults, **overrides}, set(overrides))
        if chosen:
            preset, why = chosen
            origins["PRESET"] = Origin("automatic", f"automatic: {why}", why)
    values = {**defaults, "PRESET": preset} if "PRESET" in defaults else dict(defaults)
    for name, (value, origin) in (load_preset(preset, defaults, annotations, preset_dir) if preset else {}).items():
        values[name], origins[name] = value, Origin("preset", origin)
    values.update(overrides)
    origins.update({name: Origin(COMMAND_LINE, COMMAND_LINE) for name in overrides})
    return Draft(values, origins, _types_of(defaults, annotations))


def resolve(namespace: dict, argv: list[str], automatic=None,
            preset_dir: Path = PRESET_DIR) -> tuple[Settings, dict[str, str]]:
    """The layered settings alone, frozen, and the labels of the non-constant ones. A training script resolves its
    settings with run_plan.settle, which adds the automatic choices (CPU sizing, GRAD_ACCUM, folders, VAL_SIZE)."""
    cfg = layer(namespace, argv, automatic, preset_dir).freeze()
    return cfg, cfg.origins


def print_settings(script: str, cfg: Settings, reasons, notes: tuple = ()) -> None:
    """The resolved settings, each with its origin when not the constant, then the automatic choices and why."""
    print("=" * 100)
    print(f"Settings (constants at the top of {script} -> PRESET -> --NAME=value on the command line):")
    origins = cfg.origins
    for name, value in vars(cfg).items():
        print(f"  {name:<24}= {value!r}" + (f" <- {origins[name]}" if name in origins else ""))
    print("Automatic choices:")
    for line in [*reasons, *notes]:
        print(f"  - {line}")
    print("=" * 100)


def given_on_command_line(origins: dict[str, str]) -> set[str]:
    return {name for name, origin in origins.items() if origin == COMMAND_LINE}


def available_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in preset_dir.glob("*.yaml"))


def preset_path(preset: str, preset_dir: Path = PRESET_DIR) -> Path:
    """<preset_dir>/<name>.yaml for a name; a path as given for anything that looks like a file."""
    names = ", ".join(available_presets(preset_dir))
    if preset.endswith((".yaml", ".yml")) or "/" in preset or "\\" in preset:
        path = Path(preset).expanduser()
        if not path.is_file():
            raise SettingsError(f"PRESET={preset!r}: no such file. Fix: check the path, or use one of the presets: "
                                f"{names}.")
        return path
    path = preset_dir / f"{preset}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(preset, available_presets(preset_dir), n=2, cutoff=0.4)
        raise SettingsError(f"PRESET={preset!r} is not a preset." + (f" Did you mean {' or '.join(close)}?" if close
                            else "") + f" Fix: one of {names}, or a path to a .yaml file.")
    return path


def load_preset(preset: str, defaults: dict, annotations: dict, preset_dir: Path = PRESET_DIR,
                _seen: tuple = ()) -> dict[str, tuple]:
    """{NAME: (value, origin)} of a preset file, checked exactly like --NAME=value. A PRESET key inside a preset
    starts from that preset (the demo preset starts from smollm2's recipe)."""
    import yaml
    path = preset_path(preset, preset_dir)
    label = preset if path.parent == preset_dir and path.stem == preset else str(path)
    if label in _seen:
        raise SettingsError(f"{path}: presets include each other in a loop ({' -> '.join(_seen + (label,))}). "
                            f"Fix: remove one of the PRESET keys.")
    text = path.read_text(encoding="utf-8")
    try:
        data, lines = yaml.safe_load(text), _key_lines(yaml.compose(text), path)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", -1) + 1
        raise SettingsError(f"{path}:{line}: not valid YAML ({getattr(e, 'problem', None) or e}). Fix: one "
                            f"`NAME: value` per line, as in configs/demo.yaml.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a preset is a mapping of settings (`NAME: value` lines), not "
                            f"{type(data).__name__}. Fix: see configs/demo.yaml.")
    values = {}
    for name, value in data.items():
        where = f"{path}:{lines.get(name, '?')}"
        if name == "PRESET":
            values.update(load_preset(str(value), defaults, annotations, preset_dir, _seen + (label,)))
        elif name not in defaults:
            close = difflib.get_close_matches(str(name).upper(), list(defaults), n=3, cutoff=0.5)
            raise SettingsError(f"{where}: unknown setting {name!r}." + (f" Did you mean {', '.join(close)}?" if close
                                else "") + " Fix: a preset's keys are the constants at the top of the script.")
        else:
            checked = (_coerce(name, value, defaults[name], annotations.get(name), f"{where}: {name}: {value}")
                       if isinstance(value, str) else
                       _checked(name, value, defaults[name], annotations.get(name), f"{where}: {name}: {value!r}",
                                f"{name}: {defaults[name]!r}"))
            values[name] = (checked, f"preset {label}")
    return values


def _key_lines(node, path: Path) -> dict:
    """Line numbers of a mapping's keys; a repeated key is refused (YAML would silently keep the last one)."""
    lines = {}
    for key, _ in getattr(node, "value", []) if node is not None and node.id == "mapping" else []:
        if key.value in lines:
            raise SettingsError(f"{path}:{key.start_mark.line + 1}: {key.value} is set twice (first "
                                f"on line {lines[key.value]}). Fix: keep one.")
        lines[key.value] = key.start_mark.line + 1
    return lines
