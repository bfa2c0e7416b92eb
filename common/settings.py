"""Typed settings for every ringcast service, loaded in one place.

Owns the single rule by which a service's settings dataclass becomes
command-line flags, environment variables and TOML keys, and the order in
which they win: flag > environment (`RINGCAST_<FIELD>`) > TOML file
(`--config` or `RINGCAST_CONFIG`, keys at top level or under `[<section>]`)
> the dataclass default. It must not know any particular service's fields.

A field is declared with `setting(default, "one-line help")`; its name carries
its unit (`heartbeat_interval_s`, `max_frame_bytes`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from typing import Any, Sequence, TypeVar

ENV_PREFIX = "RINGCAST_"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with."""


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, shared: bool = False) -> Any:
    """Declare one setting: its default and the line `--help` shows for it.

    `shared` marks a setting every service of a deployment has in common (the
    Redis URL, the key prefix, the log level): it may also come from the
    unprefixed environment variable and the TOML file's top level.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "shared": shared}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _field_type(cls: type, field: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    hint = hints[field.name]
    if typing.get_origin(hint) in (list,):
        return list
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _convert(kind: type, raw: Any, source: str, name: str) -> Any:
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {raw!r}")
        if kind is list:
            if isinstance(raw, list):
                return [str(item) for item in raw]
            return [item.strip() for item in str(raw).split(",") if item.strip()]
        if kind is int and isinstance(raw, float):
            raise ValueError(f"expected an integer, got {raw!r}")
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name} from {source}: {exc}") from None


def build_parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Every option can also be set by the environment variable shown with it,\n"
            "or in a TOML file given by --config / RINGCAST_CONFIG (keys are the\n"
            "option names with underscores). Precedence: flag > environment > file > default."
        ),
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"TOML settings file (env {ENV_PREFIX}CONFIG)",
    )
    for field in dataclasses.fields(cls):
        kind = _field_type(cls, field)
        help_text = field.metadata.get("help", "")
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        shown = ",".join(default) if isinstance(default, list) else default
        full_help = f"{help_text} (default: {shown!s}; env {env_name(field.name)})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": full_help}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["action"] = "append"
            kwargs["metavar"] = "VALUE"
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = {int: "INT", float: "NUMBER"}.get(kind, "TEXT")
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(flag_name(field.name), **kwargs)
    return parser


def load(
    cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    section: str,
    environ: typing.Mapping[str, str] | None = None,
) -> T:
    """Parse flags, environment and TOML into one settings object.

    Exits with status 2 and a readable message on a bad value, like argparse.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog=prog, description=description)
    namespace = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return resolve(cls, namespace, environ, section)
    except SettingsError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def resolve(cls: type[T], namespace: argparse.Namespace, environ: typing.Mapping[str, str], section: str) -> T:
    config_path = namespace.config or environ.get(ENV_PREFIX + "CONFIG")
    file_values: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {config_path}: {exc}") from None
        scoped = document.get(section, {})
        file_values = {k: v for k, v in document.items() if not isinstance(v, dict)}
        if isinstance(scoped, dict):
            file_values.update(scoped)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise SettingsError(f"unknown setting(s) in {config_path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        kind = _field_type(cls, field)
        from_flag = getattr(namespace, field.name)
        if from_flag is not None:
            values[field.name] = _convert(kind, from_flag, "flag " + flag_name(field.name), field.name)
        elif env_name(field.name) in environ:
            values[field.name] = _convert(kind, environ[env_name(field.name)], "env " + env_name(field.name), field.name)
        elif field.name in file_values:
            values[field.name] = _convert(kind, file_values[field.name], f"file {config_path}", field.name)
        choices = field.metadata.get("choices")
        if choices and field.name in values and values[field.name] not in choices:
            raise SettingsError(f"{field.name} must be one of {', '.join(choices)}, got {values[field.name]!r}")
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings
