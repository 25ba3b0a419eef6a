"""Settings declared once: a dataclass field with its default and help makes the flag, the
environment variable, the `--help` line and the docs' table row (`add_flags`, `from_args`,
`markdown_table`; a flag wins over the variable, the variable over the default). Both
`ServeConfig` and training's `TrainConfig` use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any, Callable

_TRUE = ("1", "true", "yes", "on")


def setting(default: Any, help: str, *, flag: str | None = None, env: str | None = None,
            parse: Callable[[str], Any] | None = None, choices: tuple | None = None,
            repeat: bool = False, metavar: str | None = None,
            shown_default: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    `flag` and `env` override the names made from the field's name (`--max-batch`,
    `DCGAN_MAX_BATCH`); `parse` turns the flag's or variable's text into the value (default:
    the field's type); `repeat` makes a repeatable flag whose variable is comma-separated;
    `shown_default` is what docs say instead of the raw default.
    """
    meta = dict(help=help, flag=flag, env=env, parse=parse, choices=choices, repeat=repeat,
                metavar=metavar, shown_default=shown_default)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    type: Any
    default: Any
    meta: dict

    @property
    def flag(self) -> str:
        if self.meta["flag"]:
            return self.meta["flag"]
        if self.type is bool and self.default is True:
            return f"--no-{self.name.replace('_', '-')}"
        return f"--{self.name.replace('_', '-')}"

    def env(self, prefix: str | None) -> str | None:
        if prefix is None:
            return None
        return self.meta["env"] or f"{prefix}{self.name.upper()}"

    def parse(self, text: str) -> Any:
        if self.meta["parse"]:
            return self.meta["parse"](text)
        if self.type is bool:
            return text.strip().lower() in _TRUE
        return _base_type(self.type)(text)

    def from_env(self, prefix: str | None) -> Any:
        name = self.env(prefix)
        text = os.environ.get(name) if name else None
        if text is None:
            return self.default
        try:
            if self.meta["repeat"]:
                return tuple(self.parse(part) for part in text.split(",") if part.strip())
            return self.parse(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise SystemExit(f"error: ${name}={text!r}: {exc}") from None

    def shown_default(self) -> str:
        if self.meta["shown_default"] is not None:
            return self.meta["shown_default"]
        if self.type is bool:
            return "on" if self.default else "off"
        if self.default is None or self.default == "" or self.default == ():
            return "—"
        if isinstance(self.default, list):
            return ",".join(map(str, self.default))
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def _base_type(tp: Any) -> Callable[[str], Any]:
    """`int` for `int` and `int | None`; a comma-separated list parser for `list[int]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and args:
        return lambda text: [args[0](x) for x in text.split(",") if x.strip()]
    if args:
        return args[0]
    return tp


def specs(cls) -> list[_Spec]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(_Spec(f.name, hints[f.name], default, dict(f.metadata)))
    return out


def add_flags(parser: argparse.ArgumentParser, cls, env_prefix: str | None = None) -> None:
    """One flag per setting of `cls`; its default is the environment variable, if set."""
    for spec in specs(cls):
        default = spec.from_env(env_prefix)
        env = spec.env(env_prefix)
        if spec.flag.startswith("--no-"):  # the flag turns the setting off: say so first
            help_text = (f"turn off what is on by default: {spec.meta['help']}"
                         + (f" (${env})" if env else ""))
        else:
            help_text = (f"{spec.meta['help']} (default: {spec.shown_default()}"
                         + (f"; ${env}" if env else "") + ")")
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=spec.name, help=help_text)
        if spec.type is bool:
            kwargs.update(action="store_false" if spec.flag.startswith("--no-") else "store_true",
                          default=default)
        elif spec.meta["repeat"]:
            # No default here (argparse would append to it): `from_args` fills it in.
            kwargs.update(action="append", type=_checked(spec), default=None,
                          metavar=spec.meta["metavar"])
        else:
            kwargs.update(type=_checked(spec), default=default, choices=spec.meta["choices"],
                          metavar=spec.meta["metavar"])
        parser.add_argument(spec.flag, **kwargs)


def argument_type(parse: Callable[[str], Any], name: str = "value") -> Callable[[str], Any]:
    """`parse` as an argparse `type`: its ValueError's message becomes argparse's error."""
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    checked.__name__ = name
    return checked


def _checked(spec: _Spec) -> Callable[[str], Any]:
    return argument_type(spec.parse, _base_type(spec.type).__name__ if not spec.meta["parse"]
                         else "value")


def from_args(cls, args: argparse.Namespace, env_prefix: str | None = None) -> Any:
    """An instance of `cls` from parsed flags (settings not on the parser keep defaults)."""
    values = {}
    for spec in specs(cls):
        if not hasattr(args, spec.name):
            continue
        value = getattr(args, spec.name)
        if spec.meta["repeat"]:
            value = tuple(value) if value is not None else spec.from_env(env_prefix)
        values[spec.name] = value
    return cls(**values)


def markdown_table(cls, env_prefix: str | None = None) -> str:
    """The documentation table of `cls`'s settings, as docs/*.md hold it."""
    env_column = env_prefix is not None
    head = "| flag | " + ("environment | " if env_column else "") + "default | what it does |"
    rule = "|---|" + ("---|" if env_column else "") + "---|---|"
    rows = [head, rule]
    for spec in specs(cls):
        flag = spec.flag + (f" {spec.meta['metavar']}" if spec.meta["metavar"] else "")
        cells = [f"`{flag}`"]
        if env_column:
            cells.append(f"`{spec.env(env_prefix)}`")
        cells += [spec.shown_default(), spec.meta["help"]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
