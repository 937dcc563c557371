"""Settings declared once: dataclass fields that make the flags, config-file keys and variables.

A command's settings are the fields of a dataclass, each declared with
``setting(default, help=...)``. Everything else follows from the field:

* its flag: ``state_dir`` -> ``--state-dir`` (a bool gets ``--x/--no-x``);
* its config-file key: ``state-dir`` (``state_dir`` is accepted too);
* its environment variable: ``FEDSOCK_STATE_DIR``;
* its type, from the annotation: bool, int, float, str or Path, optionally
  ``| None``; a field without a default is required;
* its ``--help`` line, which shows the default and the variable.

Precedence, highest first::

    command-line flag  >  FEDSOCK_<NAME> environment variable  >  --config FILE  >  default

A config-file key the command does not have is an error that names it,
never silently ignored; the file itself may come from ``FEDSOCK_CONFIG``.

``add_settings(parser, Config)`` adds the flags with a marker as their
default, so that ``apply(args)`` can tell an option given on the command
line from one left at its default; ``build(Config, args)`` then makes the
dataclass from the resolved values.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedsock.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "FEDSOCK_"
_META = "fedsock.setting"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
C = TypeVar("C")


@dataclass(frozen=True)
class Meta:
    """What a field declares beyond its name, type and default."""

    help: str
    group: str | None = None
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    secret: bool = False  # --print-config does not show it
    default_text: str | None = None  # how --help describes a default computed at run time


def setting(default: Any = dataclasses.MISSING, *, help: str, group: str | None = None,
            metavar: str | None = None, choices: tuple[Any, ...] | None = None, secret: bool = False,
            default_text: str | None = None) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring).

    Args:
        default: the value when given nowhere; none = a required option.
        help: what it does, for ``--help`` (the default and variable are added).
        group: the ``--help`` section it is listed in (its class's ``setting_groups``
            may describe the section).
        metavar: the placeholder in ``--help`` (e.g. ``HOST:PORT``).
        choices: the only values accepted.
        secret: leave its value out of ``--print-config``.
        default_text: the default as ``--help`` should describe it, when the
            field's default (None) is decided at run time.
    """
    meta = {_META: Meta(help, group, metavar, choices, secret, default_text)}
    return dataclasses.field(default=default, metadata=meta)


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
    """One setting, as derived from its field."""

    dest: str
    kind: Any  # bool, int, float, str or Path
    default: Any
    required: bool
    meta: Meta

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def key(self) -> str:
        """Its name in a config file."""
        return self.flag[2:]

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def help_text(self) -> str:
        """Its ``--help`` line: the declared text, then the default and the variable."""
        if self.required:
            said = "required"
        elif self.meta.default_text is not None:
            said = f"default: {self.meta.default_text}"
        elif self.default is None:
            said = ""
        else:
            said = f"default: {_shown(self.default)}"
        tail = f"{said}; ${self.env}" if said else f"${self.env}"
        return f"{self.meta.help} ({tail})".replace("%", "%%")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def options_of(cls: type) -> tuple[Option, ...]:
    """The settings of dataclass ``cls``: its fields declared with ``setting``, in order.

    Raises:
        TypeError: a setting's annotation is not one of the supported types.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        kind, optional = _kind(hints[f.name])
        required = f.default is dataclasses.MISSING
        if kind not in (bool, int, float, str, Path) or (required and optional):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported setting type {hints[f.name]}")
        out.append(Option(f.name, kind, None if required else f.default, required, meta))
    return tuple(out)


def _kind(hint: Any) -> tuple[Any, bool]:
    """``X`` or ``X | None`` -> (X, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add the flags of ``cls``'s settings (and ``--config``, once) to ``parser``.

    Several classes may be added to one parser (their field names must differ).
    """
    known: tuple[Option, ...] = parser.get_default("_settings") or ()
    if not known:
        parser.add_argument("--config", type=Path,
                            help="TOML file whose keys are these options' long names (e.g. state-dir = \"run1\"); "
                            "precedence: flags > FEDSOCK_* environment variables > this file > defaults "
                            "($FEDSOCK_CONFIG)")
    taken = {o.dest for o in known}
    groups: dict[str, argparse._ArgumentGroup] = {}
    descriptions: Mapping[str, str] = getattr(cls, "setting_groups", {})
    options = options_of(cls)
    for opt in options:
        if opt.dest in taken:
            raise TypeError(f"setting {opt.dest} is declared twice for one command")
        where: Any = parser
        if opt.meta.group is not None:
            if opt.meta.group not in groups:
                groups[opt.meta.group] = parser.add_argument_group(opt.meta.group,
                                                                   descriptions.get(opt.meta.group))
            where = groups[opt.meta.group]
        kw: dict[str, Any] = {"default": _Unset(opt.default), "dest": opt.dest}
        if opt.kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=opt.kind, metavar=opt.meta.metavar, choices=opt.meta.choices)
        action = where.add_argument(opt.flag, **kw)
        action.help = opt.help_text()  # BooleanOptionalAction would add its own "(default: ...)"
    parser.set_defaults(_settings=known + options)


def add_print_config(parser: argparse.ArgumentParser) -> None:
    """``--print-config`` (after ``add_settings``)."""
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML, with where each value came from, and exit")


def _from_text(opt: Option, text: str, where: str) -> Any:
    if opt.kind is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{where}: {text!r} is not a boolean (use true or false)")
    try:
        value = opt.kind(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {text!r} is not a valid {opt.kind.__name__} ({exc})") from None
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
    else:  # str and Path
        if isinstance(value, str):
            return _from_text(opt, value, where)
        ok = False
    if not ok:
        name = "a string" if kind in (str, Path) else kind.__name__
        raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r}")
    return _checked(opt, value, where)


def _checked(opt: Option, value: Any, where: str) -> Any:
    choices = opt.meta.choices
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
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
        keys = sorted(o.key for o in options)
        guesses = [f"{k} -> {m[0]}" for k in unknown
                   if (m := difflib.get_close_matches(k.replace("_", "-"), keys, n=1, cutoff=0.75))]
        hint = f" (did you mean: {', '.join(guesses)}?)" if guesses else ""
        raise ConfigError(f"config file {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}{hint}; known keys: {', '.join(keys)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        opt = by_key[key]
        if opt.dest in out:
            raise ConfigError(f"config file {path}: {opt.key} is given twice ({opt.key} and {opt.dest})")
        out[opt.dest] = _from_toml(opt, value, f"{path}: {key}")
    return out


def apply(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Fill every setting of ``args`` by precedence.

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


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """A message for each ``FEDSOCK_*`` variable in ``environ`` that is not in ``known``.

    Such a variable is ignored; it is most often a typo (``FEDSOCK_ROUND``),
    so the message names the closest known variable.
    """
    names = sorted(set(known))
    out = []
    for var in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in names):
        close = difflib.get_close_matches(var, names, n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        out.append(f"environment variable {var} matches no fedsock setting and is ignored{hint}")
    return out


def build(cls: type[C], args: argparse.Namespace) -> C:
    """An instance of dataclass ``cls`` from ``args`` resolved by ``apply``."""
    return cls(**{o.dest: getattr(args, o.dest) for o in options_of(cls)})


def format_toml(args: argparse.Namespace, sources: Mapping[str, str]) -> str:
    """The effective configuration as a TOML file that ``--config`` accepts back."""
    lines = []
    for opt in args._settings:
        value, source = getattr(args, opt.dest), sources.get(opt.dest, "default")
        if opt.meta.secret and value is not None:
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
