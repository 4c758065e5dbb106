"""The command line generated from a config, and how every command exits.

`add_config_args` turns a config dataclass into flags (`--train.steps 20`, help text from
`param(..., help=...)`), `config_from_args` turns the parsed flags back into the dataclass
(TOML file, then flags, then bare `key.sub=value` overrides). `run_command` is how every entry
point reports a user error: one line, exit status 2, the traceback only with `--debug`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import typing
from typing import Any, Callable

import tomli_w

from vod2chat.config import (ConfigError, field_hints, hint_at, is_section, leaf_paths, load_config, range_text,
                             strip_optional)


# -- the command line generated from a config ----------------------------------------------
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _metavar(hint: Any) -> str:
    inner, _ = strip_optional(hint)
    if typing.get_origin(inner) is list:
        return "A,B"
    if typing.get_origin(inner) is dict:
        return "{K=V}"
    return getattr(inner, "__name__", "VALUE").upper()


def _fields(cls: type, prefix: str = "", flag_prefix: str = "") -> typing.Iterator[tuple[str, str, Any, Any]]:
    """(dotted path, flag path, type hint, field) for every leaf."""
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if is_section(hint):
            fp = flag_prefix if f.metadata.get("flatten") else f"{flag_prefix}{f.name}."
            yield from _fields(hint, f"{prefix}{f.name}.", fp)
        else:
            yield f"{prefix}{f.name}", f"{flag_prefix}{f.name}", hint, f


def _default_text(f: Any) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:
        d = f.default_factory()
        if dataclasses.is_dataclass(d):
            return ""
    else:
        return ""
    if d in ("", None, [], {}):
        return ""
    return f" (default {','.join(map(str, d)) if isinstance(d, list) else d})"


class ArgParser(argparse.ArgumentParser):
    """argparse with a did-you-mean for unknown flags (`--train.stepz` -> `--train.steps`)."""

    def _option_strings(self) -> list[str]:
        out = []
        for a in self._actions:
            out += a.option_strings
            if isinstance(a, argparse._SubParsersAction):
                for sp in a.choices.values():
                    out += sp._option_strings() if isinstance(sp, ArgParser) else []
        return out

    def error(self, message: str) -> typing.NoReturn:
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            flag = m.group(1).split("=")[0]
            known = self._option_strings()
            guess = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            if guess:
                message += f" (did you mean {guess[0]}?)"
        super().error(message)


def add_config_args(p: argparse.ArgumentParser, cls: type, config: str | None = None,
                    config_help: str = "") -> None:
    """Flags for every field of `cls` (`--section.key VALUE`), `--config FILE`, `--set KEY=VALUE`
    and bare `key.sub=value` overrides. `config_from_args` turns the result into a `cls`."""
    p.set_defaults(_config_cls=cls)
    p.add_argument("--config", default=config, metavar="TOML",
                   help=config_help or f"TOML file of {cls.__name__} values" + (f" (default {config})" if config else ""))
    positional: list[tuple[str, Any, Any]] = []
    for path, flag_path, hint, f in _fields(cls):
        if f.metadata.get("positional"):
            positional.append((path, hint, f))
            continue
        flags = ["--" + flag_path.replace("_", "-")]
        if f.metadata.get("flag"):
            flags.insert(0, f.metadata["flag"])
        bounds = f.metadata.get("range")
        help_text = (f.metadata.get("help") or "") + _default_text(f) + (f" [{range_text(bounds)}]" if bounds else "")
        inner, _ = strip_optional(hint)
        if inner is bool:
            p.add_argument(*flags, dest=f"cfg:{path}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(*flags, dest=f"cfg:{path}", default=argparse.SUPPRESS, metavar=_metavar(hint),
                           choices=f.metadata.get("choices"), help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="_set",
                   help="any config key as a dotted override (the same as a bare KEY=VALUE)")
    names = " ".join(path.upper() + ("..." if typing.get_origin(strip_optional(h)[0]) is list else "")
                     for path, h, _ in positional)
    helps = "; ".join(f"{path.upper()}: {f.metadata.get('help')}" for path, _, f in positional)
    example = " ".join(f"{k}=..." for k in list(leaf_paths(cls))[-2:])
    p.add_argument("_args", nargs="*", metavar=f"{names} KEY=VALUE" if names else "KEY=VALUE",
                   help=(helps + ". " if helps else "") + f"KEY=VALUE: dotted overrides of any config key ({example})")
    p.set_defaults(_positional=[path for path, _, _ in positional])


def parse_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse, with bare arguments (overrides, input files) allowed anywhere among the flags:
    `--train.run-dir r train.steps=5 --store s` (argparse alone takes positionals in one run)."""
    a, extra = p.parse_known_args(normalise_argv(argv))
    flags = [x for x in extra if x.startswith("-")]
    if flags:
        p.error(f"unrecognized arguments: {' '.join(flags)}")
    if extra:
        if not hasattr(a, "_args"):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        a._args = list(a._args) + extra
    return a


def config_from_args(a: argparse.Namespace) -> Any:
    """The config that `add_config_args`' flags describe: the TOML file, then flags, then overrides."""
    cls = a._config_cls
    overrides: list[str] = []
    for key, value in vars(a).items():
        if key.startswith("cfg:"):
            path = key[4:]
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            overrides.append(f"{path}={text}")
    bare = []
    for arg in a._args:
        (overrides if _OVERRIDE.match(arg) else bare).append(arg)
    overrides += list(a._set)
    for path in a._positional:
        if not bare:
            break
        if typing.get_origin(strip_optional(hint_at(cls, path))[0]) is list:
            overrides.append(f"{path}={tomli_w.dumps({'v': bare})[4:].strip()}")
            bare = []
        else:
            overrides.append(f"{path}={bare.pop(0)}")
    if bare:
        raise ConfigError(f"unexpected argument {bare[0]!r}: overrides look like key.sub=value")
    cfg = load_config(cls, a.config, overrides)
    check_required(cfg)
    return cfg


def check_required(cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_required(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(f"{prefix}{f.name}={value!r}: choose one of {', '.join(f.metadata['choices'])}")
        elif f.metadata.get("required") and value in ("", None, []):
            flag = f.metadata.get("flag") or "--" + f"{prefix}{f.name}".replace("_", "-")
            what = f"{prefix}{f.name}".upper() if f.metadata.get("positional") else flag
            raise ConfigError(f"{what} is required ({f.metadata.get('help')})")


def _normalise_flag(arg: str) -> str:
    """`--train.run_dir` and `--train.run-dir` both work: flags are declared with dashes."""
    if arg.startswith("--") and not arg.startswith("---"):
        name, eq, rest = arg.partition("=")
        return name.replace("_", "-") + eq + rest
    return arg


def normalise_argv(argv: list[str]) -> list[str]:
    out, after_dd = [], False
    for arg in argv:
        after_dd = after_dd or arg == "--"
        out.append(arg if after_dd or arg == "--set" else _normalise_flag(arg))
    return out


# -- running a command ---------------------------------------------------------------------
_INNER = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|NotFound|Refused)\w*): ", re.M)


def one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if type(e).__module__.startswith("ray."):
        # Ray wraps a remote error in its traceback text: the user's cause is the last exception line.
        found = list(_INNER.finditer(msg))
        if found:
            msg = msg[found[-1].end():].strip()
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return msg


def run_command(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run `fn`; a failure is one line on stderr (per rank under torchrun) and exit status 2.
    With `debug` (the `--debug` flag) the traceback is shown as well."""
    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure reaches the user as one line
        if debug:
            raise
        rank = os.environ.get("RANK")
        where = f"{prog} (rank {rank})" if rank not in (None, "0") else prog
        user = isinstance(e, (ValueError, OSError, KeyError, LookupError, RuntimeError))
        kind = "" if user else f"{type(e).__name__}: "
        print(f"{where}: error: {kind}{one_line(e)}  (--debug shows the traceback)", file=sys.stderr)
        return 2
