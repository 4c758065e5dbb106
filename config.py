"""Typed configs from TOML files with dotted overrides (the command line generated from them: launch/args.py).

    cfg = load_config(Config, "launch/debug.toml", ["train.steps=20", "data.store=./s"])

Every stage has one dataclass (nested dataclasses for sections; litgpt/torchtitan style). A TOML
file gives the values of a run, `key.sub=value` overrides them, and `add_config_args` turns the
same dataclass into flags (`--train.steps 20`, help text from `param(..., help=...)`), so a
field is declared once. Unknown keys are errors with a did-you-mean, so a typo never silently
trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import tomli_w

T = TypeVar("T")


class ConfigError(ValueError):
    pass


# -- declaring fields ----------------------------------------------------------------------
def param(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
          flag: str | None = None, positional: bool = False, choices: list[str] | None = None,
          required: bool = False, flatten: bool = False, old_flat: bool = False, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field that also describes its command-line flag.

    help: the flag's help text. flag: an extra short spelling (`--resume` for `train.resume`).
    positional: the command's bare arguments fill this field, in declaration order (a list takes
    the rest: input files, VOD ids). required: the command refuses to run while it is empty.
    flatten: a nested section whose flags drop the prefix (`--temperature`, not
    `--sampling.temperature`); its TOML keys and dotted overrides keep it.
    old_flat: a section whose keys were once fields of the config holding it: those old keys
    (`video_weights = ...` at the top of an ingest TOML or a store's saved ingest.toml, the override
    `video_weights=random`) are read into the section, so configs written before it still load.
    ge/gt/le/lt: the range a number (or each number of a list or table) must lie in, checked at
    load; every numeric field declares one (tests/test_config.py). NaN and inf are never accepted.
    """
    if isinstance(default, (list, dict)):  # a mutable default: one copy per instance
        factory, default = (lambda d=default: type(d)(d)), dataclasses.MISSING
    meta = {"help": help, "flag": flag, "positional": positional, "choices": choices, "flatten": flatten,
            "old_flat": old_flat,
            "required": required, "range": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                                              if v is not None}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) and isinstance(hint, type)


def leaf_paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable key as a dotted path -> its type hint."""
    out: dict[str, Any] = {}
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        if is_section(hints[f.name]):
            out.update(leaf_paths(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


def _unknown(cls: type, key: str) -> ConfigError:
    """`train.stepz: unknown key; did you mean train.steps?` (matched on the full path and the leaf name)."""
    paths = list(leaf_paths(cls))
    guess = difflib.get_close_matches(key, paths, n=1, cutoff=0.6)
    if not guess:
        by_leaf = {p.rsplit(".", 1)[-1]: p for p in paths}
        leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.75)
        guess = [by_leaf[leaf[0]]] if leaf else []
    hint = f"; did you mean {guess[0]}?" if guess else f"; known keys: {', '.join(paths)}"
    return ConfigError(f"{key}: unknown key{hint}")


def moved_keys(cls: type) -> dict[str, str]:
    """Old key -> the old_flat section that holds it now (`video_weights` -> `encoders`)."""
    hints = field_hints(cls)
    return {sub.name: f.name for f in dataclasses.fields(cls)
            if f.metadata.get("old_flat") and is_section(hints[f.name])
            for sub in dataclasses.fields(hints[f.name]) if sub.name not in hints}


def canonical_key(cls: type, dotted: str) -> str:
    """The key as the config spells it now: `video_weights` -> `encoders.video_weights` (old_flat)."""
    parts, out, hint = dotted.split("."), [], cls
    for i, part in enumerate(parts):
        if not is_section(hint):
            return ".".join(out + parts[i:])  # an unknown key: hint_at names it
        hints, moved = field_hints(hint), moved_keys(hint)
        if part not in hints and part in moved:
            out.append(moved[part])
            hints = field_hints(hints[moved[part]])
        out.append(part)
        hint = hints.get(part)
    return ".".join(out)


def canonical_tree(cls: type, data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A TOML table with old keys moved into their old_flat sections (a copy). An old key and its
    new spelling both given is an error: which one was meant is not for the loader to guess."""
    hints, moved = field_hints(cls), moved_keys(cls)
    out = {k: canonical_tree(hints[k], v, f"{where}{k}.") if k in hints and is_section(hints[k]) and isinstance(v, dict)
           else v for k, v in data.items()}
    for key in [k for k in out if k in moved]:
        section = out.setdefault(moved[key], {})
        if not isinstance(section, dict):
            continue  # `encoders = 3`: _build says it is a section
        if key in section:
            new = f"{where}{moved[key]}.{key}"
            raise ConfigError(f"{where}{key} and {new}: one key given twice (the first is its old spelling); "
                              f"keep {new}")
        section[key] = out.pop(key)
    return out


def hint_at(cls: type, dotted: str) -> Any:
    hint: Any = cls
    for part in dotted.split("."):
        if not is_section(hint):
            raise _unknown(cls, dotted)
        hints = field_hints(hint)
        if part not in hints:
            raise _unknown(cls, dotted)
        hint = hints[part]
    return hint


# -- parsing values ------------------------------------------------------------------------
def strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return inner[0], type(None) in args
    return hint, False


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings: data.store=./store


def parse_text(text: str, hint: Any) -> Any:
    """A value typed on a command line, read for a field of type `hint`.

    Strings stay as typed (`--vod 0123`, `--end 1:00:00`); lists take TOML (`["a","b"]`, `[410474822]`),
    a comma list (`a,b`) or one bare item (`410474822`); everything else is a TOML literal.
    """
    inner, optional = strip_optional(hint)
    if optional and text.lower() in ("none", "null"):
        return None
    if inner is str:
        return text
    if typing.get_origin(inner) is list:
        t = text.strip()
        if t.startswith("["):
            return _parse_value(t)
        return [v.strip() for v in t.split(",") if v.strip()]
    return _parse_value(text)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    inner, optional = strip_optional(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner is str:
        if isinstance(value, (dict, list, bool)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)  # a bare numeric id: data.store=123 or vod ids in TOML
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif not isinstance(value, list):
            value = [value]  # data.val_vods=410474822
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table like {{a = 1.0}}, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") if args else v for k, v in value.items()}
    if inner in (int, float, bool) and (not isinstance(value, inner) or (inner is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {inner.__name__}, got {value!r}")
    return value


_RANGE_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def range_text(bounds: dict[str, float]) -> str:
    """`> 0 and <= 1` for {"gt": 0, "le": 1}."""
    return " and ".join(f"{_RANGE_TEXT[k]} {bounds[k]:g}" for k in ("ge", "gt", "le", "lt") if k in bounds)


def check_range(value: Any, bounds: dict[str, float], where: str) -> None:
    """A number outside its field's declared range, NaN or inf is one line naming the key, the
    value and the range: `train.lr=inf: out of range, must be a finite number > 0`."""
    if isinstance(value, list):
        for v in value:
            check_range(v, bounds, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            check_range(v, bounds, f"{where}.{k}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    ok = math.isfinite(value) and all(
        {"ge": value >= b, "gt": value > b, "le": value <= b, "lt": value < b}[k] for k, b in bounds.items())
    if not ok:
        want = "a finite number" + (f" {range_text(bounds)}" if bounds else "")
        raise ConfigError(f"{where}={value!r}: out of range, must be {want}")


def _build(cls: type[T], data: dict[str, Any], where: str, root: type) -> T:
    hints = field_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in hints:
            raise _unknown(root, f"{where}{key}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if is_section(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} is a section ([{where}{name}] in TOML), got {value!r}")
            kwargs[name] = _build(hint, value, f"{where}{name}.", root)
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
            check_range(kwargs[name], fields[name].metadata.get("range") or {}, f"{where}{name}")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    tree[leaf] = value


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """`cls` from a TOML file (optional) and `key.sub=value` overrides applied in order."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = canonical_tree(cls, read_toml(path))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        k, v = (s.strip() for s in ov.split("=", 1))
        k = canonical_key(cls, k)
        _set_dotted(data, k, parse_text(v, hint_at(cls, k)))
    return _build(cls, data, "", cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict without None values (TOML has no null)."""
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if v is not None}
        return x
    return strip(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """The config a stage ran with, next to its output (loadable again with --config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(tomli_w.dumps(to_dict(cfg)))


def replaced(cfg: T, changes: dict[str, Any]) -> T:
    """A copy of `cfg` with dotted keys set (`{"data.store": url}`): values a run derives after
    loading go into its own copy, and the loaded config stays what the user gave."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        cfg = dataclasses.replace(cfg, **{head: replaced(getattr(cfg, head), {rest: value}) if rest else value})
    return cfg
