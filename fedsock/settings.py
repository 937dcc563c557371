"""Where a command's options come from: flags, ``FEDSOCK_*`` variables, a TOML file, defaults.

Precedence, highest first::

    command-line flag  >  FEDSOCK_<NAME> environment variable  >  --config FILE  >  default

The file's keys are the long flag names without the dashes in front
(``state-dir = "run1"``; ``state_dir`` is accepted too). A key the command
does not have is an error that names it, never silently ignored. The
environment variable of ``--state-dir`` is ``FEDSOCK_STATE_DIR``; the file
itself may come from ``FEDSOCK_CONFIG``.

``prepare(parser)`` (after all options are added) replaces every default by
a marker, so ``apply(args)`` can tell an option given on the command line
from one left at its default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsock.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "FEDSOCK_"
#: Options that are never configuration (they say what to do with it, or are global).
NOT_SETTINGS = {"help", "config", "print_config", "verbose"}
#: Values --print-config does not show.
SECRETS = {"token", "upstream_token"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class _Unset:
    """The default of an option not given on the command line."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def __repr__(self) -> str:
        return repr(self.default)

    def __str__(self) -> str:
        return str(self.default)


@dataclass(frozen=True)
class Option:
    """One setting: its argparse destination and how to read it from text or TOML."""

    dest: str
    flag: str
    kind: Any  # bool, int, float, Path, str, or another callable taking a str
    default: Any
    required: bool
    choices: tuple[Any, ...] | None

    @property
    def key(self) -> str:
        """Its name in a config file."""
        return self.flag.lstrip("-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--print-config``."""
    parser.add_argument("--config", type=Path,
                        help="TOML file whose keys are these options' long names (e.g. state-dir = \"run1\"); "
                        "precedence: flags > FEDSOCK_* environment variables > this file > defaults "
                        "(default: $FEDSOCK_CONFIG)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML, with where each value came from, and exit")


def prepare(parser: argparse.ArgumentParser) -> None:
    """Make ``parser``'s options resolvable by ``apply``; call after adding every option."""
    options = []
    for a in parser._actions:
        if a.dest in NOT_SETTINGS or not a.option_strings or a.default is argparse.SUPPRESS:
            continue
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            kind: Any = bool
        else:
            kind = a.type or str
        flag = next(o for o in a.option_strings if o.startswith("--"))
        options.append(Option(a.dest, flag, kind, a.default, a.required, tuple(a.choices) if a.choices else None))
        a.default = _Unset(a.default)
        a.required = False  # may come from the environment or the file; checked in apply
    parser.set_defaults(_settings=tuple(options))


def _from_text(opt: Option, text: str, where: str) -> Any:
    if opt.kind is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{where}: {text!r} is not a boolean (use true or false)")
    try:
        value = opt.kind(text)
    except (TypeError, ValueError) as exc:
        kind = getattr(opt.kind, "__name__", "value")
        raise ConfigError(f"{where}: {text!r} is not a valid {kind} ({exc})") from None
    return _checked(opt, value, where)


def _from_toml(opt: Option, value: Any, where: str) -> Any:
    kind = opt.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # str, Path and other text types
        if isinstance(value, str):
            return _from_text(opt, value, where)
        ok = False
    if not ok:
        name = getattr(kind, "__name__", "string")
        raise ConfigError(f"{where}: expected {'a string' if kind in (str, Path) else name}, "
                          f"got {type(value).__name__} {value!r}")
    return _checked(opt, value, where)


def _checked(opt: Option, value: Any, where: str) -> Any:
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, opt.choices))}")
    return value


def load_file(path: Path, options: tuple[Option, ...]) -> dict[str, Any]:
    """The settings in a TOML file, by destination.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown keys (all named), a
            key given twice, or a value of the wrong type.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    by_key = {o.key: o for o in options} | {o.dest: o for o in options}
    unknown = sorted(k for k in data if k not in by_key)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}; known keys: {', '.join(sorted(o.key for o in options))}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        opt = by_key[key]
        if opt.dest in out:
            raise ConfigError(f"config file {path}: {opt.key} is given twice ({opt.key} and {opt.dest})")
        out[opt.dest] = _from_toml(opt, value, f"{path}: {key}")
    return out


def apply(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Fill every prepared option of ``args`` by precedence.

    Returns:
        Where each value came from: dest -> "flag", "env FEDSOCK_...", "file PATH" or "default".

    Raises:
        ConfigError: a bad environment variable or config file, or a required
            option given nowhere.
    """
    options: tuple[Option, ...] = args._settings
    environ = os.environ if environ is None else environ
    path = args.config
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
        args.config = path
    from_file = load_file(path, options) if path is not None else {}
    sources: dict[str, str] = {}
    for opt in options:
        value = getattr(args, opt.dest)
        if not isinstance(value, _Unset):
            sources[opt.dest] = "flag"
        elif opt.env in environ:
            value = _from_text(opt, environ[opt.env], opt.env)
            sources[opt.dest] = f"env {opt.env}"
        elif opt.dest in from_file:
            value = from_file[opt.dest]
            sources[opt.dest] = f"file {path}"
        else:
            if opt.required:
                raise ConfigError(f"{opt.flag} is required: give it on the command line, as {opt.env}, "
                                  f"or as {opt.key} in a --config file")
            value = opt.default
            sources[opt.dest] = "default"
        setattr(args, opt.dest, value)
    return sources


def format_toml(args: argparse.Namespace, sources: Mapping[str, str]) -> str:
    """The effective configuration as a TOML file that ``--config`` accepts back."""
    lines = []
    for opt in args._settings:
        value, source = getattr(args, opt.dest), sources.get(opt.dest, "default")
        if opt.dest in SECRETS and value is not None:
            lines.append(f"# {opt.key} = (hidden)  # {source}")
        elif value is None:
            lines.append(f"# {opt.key} is not set  # {source}")
        else:
            lines.append(f"{opt.key} = {_toml_value(value)}  # {source}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string
