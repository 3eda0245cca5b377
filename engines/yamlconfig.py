"""Typed loading of YAML into dataclasses, with errors that name the file and the key path.

Kept apart from the config *sections* (``pipeline.config``) so any module can describe its own
section as a dataclass and reuse the same validation and JSON Schema export.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config value is wrong; the message names the file, the key path and what was expected."""

    def __init__(self, file: str | os.PathLike[str] | None, key: str, message: str) -> None:
        self.file = str(file) if file is not None else "<config>"
        self.key = key or "<top level>"
        super().__init__(f"{self.file}: {self.key}: {message}")


def path_field(default: Any = None, **kwargs: Any) -> Any:
    """A string field holding a filesystem path, resolved relative to the config file."""
    return dataclasses.field(default=default, metadata={"path": True}, **kwargs)


def interpolate_env(value: Any, file: str | None, key: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate_env(v, file, _join(key, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(file, key, f"environment variable ${{{name}}} is not set")
        return _ENV.sub(sub, value)
    return value


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def build(cls: type, data: Any, *, file: str | None = None, key: str = "",
          base_dir: Path | None = None) -> Any:
    """Build dataclass ``cls`` from plain YAML data, validating every key and value."""
    return _convert(cls, data, file, key, base_dir, is_path=False)


def _convert(tp: Any, value: Any, file: str | None, key: str, base_dir: Path | None,
             is_path: bool) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        shaped = [a for a in args if _same_shape(a, value)]
        if len(shaped) == 1:  # a mapping for a section, a list for a list: its errors are the ones
            args = tuple(shaped)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, file, key, base_dir, is_path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(file, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(file, key, f"expected one of {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, file, key, base_dir)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(file, key, f"expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_convert(item, v, file, f"{key}[{i}]", base_dir, is_path) for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(file, key, f"expected a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, file, f"{key}[{i}]", base_dir, is_path)
                         for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(file, key, f"expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(a, v, file, f"{key}[{i}]", base_dir, is_path)
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        kt, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected a mapping, got {value!r}")
        return {_convert(kt, k, file, key, base_dir, False):
                _convert(vt, v, file, _join(key, k), base_dir, is_path) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"expected a string, got {value!r}")
        if is_path and base_dir is not None and "://" not in value:
            p = Path(value).expanduser()
            return os.path.normpath(p if p.is_absolute() else (base_dir / p))
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _same_shape(tp: Any, value: Any) -> bool:
    """Whether ``value`` has the YAML shape ``tp`` needs (mapping / list / scalar)."""
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp) or get_origin(tp) is dict
    if isinstance(value, list):
        return get_origin(tp) in (list, tuple)
    return False


def _build_dataclass(cls: Any, value: Any, file: str | None, key: str, base_dir: Path | None) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(file, key, f"expected {_type_name(cls)}, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in value:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(file, _join(key, k),
                              f"unknown key{hint}; allowed keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], file, _join(key, name), base_dir,
                                    bool(f.metadata.get("path")))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(file, _join(key, name), f"required key is missing (expected {_type_name(hints[name])})")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(file, key, str(e)) from None
    return obj


def json_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for a config dataclass, for editors."""
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [json_schema(a) for a in get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            s = json_schema(hints[f.name])
            if f.metadata.get("doc"):
                s["description"] = f.metadata["doc"]
            if f.default is not dataclasses.MISSING and isinstance(f.default, (int, float, str, bool)):
                s["default"] = f.default
            props[f.name] = s
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if tp.__doc__:
            out["description"] = tp.__doc__.strip().splitlines()[0]
        if required:
            out["required"] = required
        return out
    if origin is list:
        return {"type": "array", "items": json_schema(get_args(tp)[0])}
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": json_schema(args[0])}
        return {"type": "array", "prefixItems": [json_schema(a) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    return {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
            str: {"type": "string"}}[tp]


def read_yaml(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML file's top-level mapping with ``overrides`` merged on top; clear errors otherwise."""
    import yaml

    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "expected a mapping at the top level")
    return deep_merge(raw, overrides) if overrides else raw


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
