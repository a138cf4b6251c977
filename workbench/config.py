"""Settings as data: read a YAML/JSON file and fill a config dataclass, or say exactly what is wrong.

One helper serves every config dataclass (:func:`from_mapping`): unknown keys, wrong container types
and wrong value types are reported with the file and the dotted field path (``distill.optim.lr``)
and the type the field expects; booleans are not numbers and numbers are not booleans. The
dataclass's own ``__post_init__`` then checks ranges and names. :func:`read_config_file` reads YAML
with ``yaml.safe_load`` (data only: a ``!!python/...`` tag is refused) and reports syntax errors with
the file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path

import yaml

# The dataset manifests: the checkout's top-level data_manifests/, reached through the package's link to it,
# and copied into the package by a wheel, so that an installed workbench finds them without the repository.
DATA_MANIFESTS = Path(__file__).resolve().parent / "data_manifests"


def flatten(data, prefix: str = "") -> dict:
    """Nested mappings as one level, keys joined by ``/`` (``{"a": {"b": 1}}`` -> ``{"a/b": 1}``)."""
    out = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def differences(stored: dict, wanted: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"field: old → new"`` for every flattened field of both configs whose values differ, sorted.

    Fields only one side has (settings added to the workbench after a run was stored) are not compared.
    """
    old, new = flatten(stored), flatten(wanted)
    return [f"{key.replace('/', '.')}: {old[key]!r} → {new[key]!r}"
            for key in sorted(old.keys() & new.keys()) if key not in ignore and old[key] != new[key]]


class ConfigError(ValueError):
    """A config file or mapping that cannot become a config; the message names the file and field."""


def read_config_file(path: str | os.PathLike, kind: str = "config file"):
    """The data of a YAML or JSON file; syntax errors and unsafe tags as :class:`ConfigError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "python/" in str(err):
            problem = ("a Python tag (!!python/...): config files hold data only, so tags that build Python "
                       "objects are refused")
        raise ConfigError(f"{path}:{where}: not a valid config file: {problem}") from None


def _describe(kind) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list", type(None): "null"}
    if dataclasses.is_dataclass(kind):
        return "a mapping of settings"
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _options(kind) -> tuple:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    if origin is not None:  # list[str], dict[str, int] …: the container is what is checked
        return (origin,)
    return (kind,)


def _convert(kind, value, origin: str, where: str):
    """``value`` as field type ``kind``, or :class:`ConfigError` naming ``where`` and the expected type."""
    options = _options(kind)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            if isinstance(value, dict) or value is None:
                return from_mapping(option, value, origin, f"{where}.")
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (str, dict, list) and isinstance(value, option):
            return value
        if option is typing.Any or option is object:
            return value
    expected = " or ".join(_describe(o) for o in options)
    hint = ""
    if isinstance(value, str) and any(o in (int, float) for o in options):
        try:
            float(value)
            hint = " (a string: quote-free numbers only; YAML reads 5e-4 as text, write 5.0e-4)"
        except ValueError:
            pass
    raise ConfigError(f"{origin}: {where} must be {expected}, got {value!r}{hint}")


def check_names(data, valid, origin: str = "config", prefix: str = "", error: type[Exception] = ConfigError,
                what: str = "setting", hint: str = "") -> None:
    """Raise ``error`` naming every key of mapping ``data`` that is not in ``valid``; the one check of unknown keys.

    The message names the file (``origin``), each unknown key with its dotted path (``prefix``, e.g.
    ``"distill."``) and the closest valid name, then every valid name, e.g. ``bad.yaml: unknown setting
    distill.ame_wieght (did you mean distill.ame_weight?); valid names: ...``. ``what`` is the noun
    used for a key (``setting``, ``field``); ``hint`` is appended (where other keys belong).
    """
    valid = [str(name) for name in valid]
    unknown = [str(k) for k in data if str(k) not in valid]
    if not unknown:
        return
    close = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
    named = ", ".join(f"{prefix}{k}" + (f" (did you mean {prefix}{close[k][0]}?)" if close[k] else "") for k in unknown)
    raise error(f"{origin}: unknown {what}{'s' if len(unknown) > 1 else ''} {named}; "
                f"valid names: {', '.join(prefix + name for name in valid)}" + (f" {hint}" if hint else ""))


def from_mapping(cls, data, origin: str = "config", prefix: str = ""):
    """An instance of dataclass ``cls`` from ``data`` (a mapping; None means all defaults).

    Nested dataclass fields are filled recursively; ``prefix`` is the dotted path of ``data`` inside
    the file, for messages. The dataclass's ``__post_init__`` errors are re-raised naming the file.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"{origin}: {where} must be a mapping of settings (name: value), got "
                          f"{type(data).__name__} {data!r:.80}")
    layer = getattr(cls, "layer_defaults", None)
    if layer is not None:  # defaults of nested settings that depend on others (a recipe's optimiser)
        data = layer(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_names(data, fields, origin, prefix)
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], value, origin, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{origin}: in {prefix.rstrip('.')}: {err}" if prefix else f"{origin}: {err}") from None
