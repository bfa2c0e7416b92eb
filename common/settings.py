"""Typed settings for every ringcast service, loaded in one place.

Owns the single rule by which a service's settings dataclass becomes
command-line flags, environment variables and TOML keys, and the order in
which they win. It must not know any particular service's fields: it knows
only the service's section name (`node`, `router`, `control`) and which
fields are marked `shared` (the Redis URL, the key prefix, the log level:
what every service of one deployment has in common).

Where a field's value comes from, the first one found winning:

1. the flag `--<field>`;
2. `RINGCAST_<SECTION>_<FIELD>` (`RINGCAST_NODE_PORT`, `RINGCAST_ROUTER_PORT`);
3. a shared field's `RINGCAST_<FIELD>` (`RINGCAST_REDIS`), then the field's
   declared `env_alias` if it has one (a name documented before per-service
   names existed, e.g. `RINGCAST_ADMIN_TOKEN`);
4. the TOML file (`--config` or `RINGCAST_CONFIG`): the service's own
   `[<section>]`, then, for a shared field, the file's top level;
5. the dataclass default.

What is refused or ignored, so one environment and one file can serve every
service of a host without moving or breaking the others:

- `RINGCAST_<FIELD>` of a field that is not shared is not applied; a warning
  names the variable to use instead (it was the only name before).
- In the file, an unknown key in the own section is an error (a typo); a
  top-level key that is one of this service's fields but not shared is an
  error (it belongs under `[<section>]`); a top-level key that is none of its
  fields is ignored with a warning (another service's shared setting); other
  services' sections are not read at all.

Warnings are one line each on stderr; errors exit 2 like argparse.

A field is declared with `setting(default, "one-line help")`; its name carries
its unit (`heartbeat_interval_s`, `max_frame_bytes`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import types
import typing
from typing import Any, Sequence, TypeVar

ENV_PREFIX = "RINGCAST_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with."""


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    shared: bool = False,
    env_alias: str | None = None,
    secret: bool = False,
) -> Any:
    """Declare one setting: its default and the line `--help` shows for it.

    `shared` marks a setting every service of a deployment has in common (the
    Redis URL, the key prefix, the log level): it may also come from the
    unprefixed environment variable `RINGCAST_<FIELD>` and the TOML file's top
    level. `env_alias` names one more environment variable the setting is read
    from, after `RINGCAST_<SECTION>_<FIELD>`: for a name operators already use.
    `secret` marks a password: it has no flag (argv is readable by every local
    user through `ps`), only its environment variables and the TOML file.
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "shared": shared,
        "env_alias": env_alias,
        "secret": secret,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str, section: str) -> str:
    """The service's own variable for a field: `RINGCAST_<SECTION>_<FIELD>`."""
    return f"{ENV_PREFIX}{section.upper()}_{field_name.upper()}"


def unprefixed_env_name(field_name: str) -> str:
    """`RINGCAST_<FIELD>`: read only for shared fields; other services' business otherwise."""
    return ENV_PREFIX + field_name.upper()


def env_names(field: dataclasses.Field, section: str) -> tuple[str, ...]:
    """Every variable a field is read from, the one that wins first."""
    names = [env_name(field.name, section)]
    if field.metadata.get("shared"):
        names.append(unprefixed_env_name(field.name))
    alias = field.metadata.get("env_alias")
    if alias and alias not in names:
        names.append(alias)
    return tuple(names)


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


def _epilog(cls: type, section: str) -> str:
    fields = dataclasses.fields(cls)
    shared = [field.name for field in fields if field.metadata.get("shared")]
    example = next((field.name for field in fields if not field.metadata.get("shared")), "log_level")
    prefix = env_name("", section)
    secrets = "".join(
        f"\n  {field.name}: {field.metadata.get('help', '')} (env {' or '.join(env_names(field, section))})"
        for field in fields if field.metadata.get("secret")
    )
    secrets = f"\nSecrets have no flag (argv is readable by every local user), only variables and the file:{secrets}\n" if secrets else ""
    return secrets + (
        f"Every option can also be set by the environment variable(s) shown with it:\n"
        f"{prefix}<OPTION> (e.g. {env_name(example, section)}), and for an option shared\n"
        f"by every service ({', '.join(shared) or 'none here'}) also {ENV_PREFIX}<OPTION>.\n"
        f"{ENV_PREFIX}<OPTION> of an option that is not shared is not applied (a warning\n"
        f"says which name to use). A TOML file given by --config / {CONFIG_ENV}\n"
        f"holds this service's options under [{section}] (keys are the option names\n"
        f"with underscores) and the shared ones at its top level too; other\n"
        f"services' sections are ignored. Precedence: flag > the environment\n"
        f"variables in the order shown > file [{section}] > file top level > default."
    )


def build_parser(cls: type, *, prog: str, description: str, section: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(cls, section),
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"TOML settings file (env {CONFIG_ENV})",
    )
    for field in dataclasses.fields(cls):
        if field.metadata.get("secret"):
            continue  # environment or file only: never in argv
        kind = _field_type(cls, field)
        help_text = field.metadata.get("help", "")
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        shown = ",".join(default) if isinstance(default, list) else default
        full_help = f"{help_text} (default: {shown!s}; env {' or '.join(env_names(field, section))})"
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

    Prints each warning (a setting given where this service does not read it)
    as one line on stderr. Exits with status 2 and a readable message on a bad
    value, like argparse.
    """
    environ = os.environ if environ is None else environ
    parser = build_parser(cls, prog=prog, description=description, section=section)
    namespace = parser.parse_args(list(argv) if argv is not None else None)
    try:
        settings, warnings = resolve(cls, namespace, environ, section)
    except SettingsError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
    for warning in warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr, flush=True)
    return settings


def resolve(
    cls: type[T], namespace: argparse.Namespace, environ: typing.Mapping[str, str], section: str
) -> tuple[T, list[str]]:
    """The settings object, and the warnings about values given where this service does not read them."""
    config_path = namespace.config or environ.get(CONFIG_ENV)
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    if config_path:
        file_values, file_warnings = _read_file(cls, config_path, section)
        warnings += file_warnings
    env_values, env_warnings = _read_environment(cls, environ, section)
    warnings += env_warnings
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        kind = _field_type(cls, field)
        from_flag = getattr(namespace, field.name, None)  # a secret has no flag
        if from_flag is not None:
            values[field.name] = _convert(kind, from_flag, "flag " + flag_name(field.name), field.name)
        elif field.name in env_values:
            variable, raw = env_values[field.name]
            values[field.name] = _convert(kind, raw, "env " + variable, field.name)
        elif field.name in file_values:
            values[field.name] = _convert(kind, file_values[field.name], f"file {config_path}", field.name)
        choices = field.metadata.get("choices")
        if choices and field.name in values and values[field.name] not in choices:
            raise SettingsError(f"{field.name} must be one of {', '.join(choices)}, got {values[field.name]!r}")
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings, warnings


def _read_environment(
    cls: type, environ: typing.Mapping[str, str], section: str
) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{field: (variable, raw value)} of the variables this service reads, and warnings.

    A warning names each `RINGCAST_<FIELD>` of a field that is not shared: it
    used to move every service on the host, now it moves none.
    """
    fields = dataclasses.fields(cls)
    read = {name for field in fields for name in env_names(field, section)}
    values: dict[str, tuple[str, str]] = {}
    warnings: list[str] = []
    for field in fields:
        for name in env_names(field, section):
            if name in environ:
                values[field.name] = (name, environ[name])
                break
        unprefixed = unprefixed_env_name(field.name)
        if unprefixed in environ and unprefixed not in read:
            warnings.append(
                f"{unprefixed} is not applied: {field.name} is not shared by every service; "
                f"set {env_name(field.name, section)} instead"
            )
    return values, warnings


def _read_file(cls: type, path: str, section: str) -> tuple[dict[str, Any], list[str]]:
    """{field: raw value} from the TOML file at `path` for this service, and warnings."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    fields = {field.name: field for field in dataclasses.fields(cls)}
    own = document.get(section, {})
    if not isinstance(own, dict):
        raise SettingsError(f"{section} in {path} must be a table: [{section}]")
    unknown = sorted(set(own) - set(fields))
    if unknown:
        raise SettingsError(f"unknown setting(s) under [{section}] in {path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in document.items():
        field = fields.get(key)
        if key == section or (field is None and isinstance(value, dict)):
            continue  # the own section is read above; other services' sections are theirs
        if field is None:
            warnings.append(f"{key} at the top level of {path} is ignored: it is not a setting of this service")
        elif not field.metadata.get("shared"):
            raise SettingsError(
                f"{key} at the top level of {path} is not shared by every service: move it under [{section}]"
            )
        else:
            values[key] = value
    values.update(own)
    return values, warnings
