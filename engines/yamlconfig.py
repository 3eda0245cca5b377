"""Typed, immutable config sections loaded from YAML, with errors that name the file and key path.

Each section is a pydantic model deriving from :class:`ConfigModel` (unknown keys refused, frozen,
strict types: YAML ``"5"`` is not a number). Bounds are ``Field`` constraints and rules across
fields are validators, so they reach the editor JSON Schema (:func:`json_schema`) and are checked
whole when a file is loaded. :func:`load_section` turns pydantic's errors into one
:class:`ConfigError` line: ``FILE: key.path[i]: reason`` ("did you mean" for unknown keys).

Kept apart from the sections themselves (``pipeline.config``, ``engines.train.config``,
``calibrate.config``) so every layer describes its own section with the same base.

Example::

    class SmoothingConfig(ConfigModel):
        alpha: float = Field(0.3, gt=0, le=1, description="EMA weight of the newest count")

    cfg = load_section(SmoothingConfig, {"alpah": 0.2}, file="cams.yaml", key="smoothing")
    # ConfigError: cams.yaml: smoothing.alpah: unknown key (did you mean 'alpha'?); allowed ...
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, NoReturn, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError, core_schema

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config value is wrong; the message names the file, the key path and what was expected
    (``file``, ``key`` and ``detail`` hold the three parts)."""

    def __init__(self, file: str | os.PathLike[str] | None, key: str, message: str) -> None:
        self.file = str(file) if file is not None else "<config>"
        self.key = key or "<top level>"
        self.detail = " ".join(message.split())  # one line, whatever the source said
        super().__init__(f"{self.file}: {self.key}: {self.detail}")


# ---- immutable containers -------------------------------------------------------------------------

class FrozenDict(dict[K, V]):
    """A mapping of a loaded config: reads like a dict, refuses every change, pickles as itself."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a loaded config is read-only (build a new one to change it)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:  # dict's default would call the refused __setitem__
        return (FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pair(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise PydanticCustomError("pair", "expected a pair [a, b], got {got}", {"got": _show(value)})
    return _as_tuple(value)


# A mapping section (``options``, ``headers``...): a FrozenDict once loaded.
Frozen = Annotated[dict[K, V], AfterValidator(FrozenDict)]
# A YAML list, kept as a tuple.
Items = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]
# Two values of one type, e.g. ``Pair[PositiveInt]`` for a (width, height).
Pair = Annotated[tuple[T, T], BeforeValidator(_pair)]
FloatPair = Pair[float]

# Tags of the two shapes of a one-or-many field; not key names, so left out of error key paths.
_ONE, _MANY = "<one>", "<list>"


def _one_or_many(value: Any) -> str:
    return _MANY if isinstance(value, (list, tuple)) else _ONE


# One mapping or a list of them, kept as given (the model, or a tuple of models); errors come
# from the shape given only (a mapping's keys, or the list's items).
OneOrMany = Annotated[Annotated[T, Tag(_ONE)] | Annotated[Items[T], Tag(_MANY)],
                      Discriminator(_one_or_many)]


# ---- paths and patterns ---------------------------------------------------------------------------

def context_of(info: ValidationInfo) -> dict[str, Any]:
    """What :func:`load_section` passed down: ``file``, ``base_dir`` and any extra flags."""
    return info.context or {}


def resolve_path(value: str, base_dir: Path | str | None) -> str:
    """``value`` relative to ``base_dir`` (``~`` expanded); URLs and absolute paths unchanged."""
    if base_dir is None or "://" in value:
        return value
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else Path(base_dir) / p)


def _resolve(value: str, info: ValidationInfo) -> str:
    return resolve_path(value, context_of(info).get("base_dir"))


@dataclass(frozen=True)
class Pattern:
    """``Annotated`` metadata: the string matches ``regex`` (also in the JSON Schema); the error
    says what was ``expected`` instead of quoting the regex."""

    regex: str
    expected: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler
                                     ) -> core_schema.CoreSchema:
        compiled = re.compile(self.regex)

        def check(value: str) -> str:
            if not compiled.search(value):
                raise PydanticCustomError("pattern", "expected {expected}, got {got}",
                                          {"expected": self.expected, "got": _show(value)})
            return value
        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        out["pattern"] = self.regex
        return out


# A filesystem path (not blank); relative ones resolve against the config file's folder when
# loaded from one.
PathStr = Annotated[str, Pattern(r"\S", "a path"), AfterValidator(_resolve)]


# ---- the base model -------------------------------------------------------------------------------

def rule_error(message: str, *at: str | int) -> PydanticCustomError:
    """Raise from a validator: a rule across fields failed at key path ``at`` below the model
    that checks it (``rule_error("unknown zone 'x'", "alerts", 0, "zone")``)."""
    return PydanticCustomError("rule", "{message}", {"message": message, "at": at})


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys refused (with a suggestion), frozen after
    construction, strict scalar types, YAML lists taken for tuples, ``null`` for all defaults."""

    # defer_build: a process that only unpickles a config (every spawned stage) never pays for
    # building the validators; the loader builds them on first use
    model_config: ClassVar[ConfigDict] = ConfigDict(
        extra="forbid", frozen=True, strict=True, validate_default=False, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:  # `section:` with nothing under it: every default
            return {}
        if isinstance(data, Mapping):
            fields = list(cls.model_fields)
            for k in data:
                if k not in cls.model_fields:
                    close = difflib.get_close_matches(str(k), fields, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise PydanticCustomError(
                        "unknown_key", "unknown key{hint}; allowed keys: {allowed}",
                        {"key": k, "hint": hint, "allowed": ", ".join(sorted(fields))})
        return data


def load_section(cls: type[M], data: Any, *, file: str | os.PathLike[str] | None = None,
                 key: str = "", base_dir: Path | str | None = None,
                 context: dict[str, Any] | None = None) -> M:
    """Validate ``data`` (plain YAML values) as ``cls``; raise one :class:`ConfigError` line.

    ``key`` is where ``data`` sits in the file; relative path fields resolve against
    ``base_dir``; ``context`` reaches the validators (see :func:`context_of`).
    """
    ctx = {"file": None if file is None else str(file), "base_dir": base_dir, **(context or {})}
    try:
        return cls.model_validate(data, context=ctx)
    except ValidationError as e:
        raise config_error(e, file, key) from None


def config_error(error: ValidationError, file: str | os.PathLike[str] | None,
                 key: str = "") -> ConfigError:
    """The first of pydantic's errors as a :class:`ConfigError`: key path and reason."""
    err = error.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    loc: list[Any] = [p for p in err["loc"] if p not in (_ONE, _MANY)]
    if err["type"] == "unknown_key":
        loc.append(ctx["key"])
    elif err["type"] == "rule":
        loc.extend(ctx["at"])
    return ConfigError(file, key_path(key, loc), _reason(err))


def key_path(prefix: str, loc: list[Any] | tuple[Any, ...]) -> str:
    """``("cameras", "a", "zones", 0)`` under ``prefix`` -> ``prefix.cameras.a.zones[0]``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list", "none_required": "null",
}
_BOUND = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
          "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _reason(err: Any) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("rule", "unknown_key", "pair", "pattern"):
        return err["msg"]
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(got)}"
    if kind in _BOUND:
        name, op = _BOUND[kind]
        bound = ctx[name]
        return f"must be {op} {bound:g}, got {_show(got)}" if isinstance(bound, (int, float)) \
            else f"must be {op} {bound}, got {_show(got)}"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {_show(got)}"
    if kind == "missing":
        return "required key is missing"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length")
        return ("must not be empty" if least == 1 else
                f"needs at least {least} items, got {ctx.get('actual_length', _show(got))}")
    if kind in ("too_long", "string_too_long"):
        return f"has at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "frozen_instance":
        return "a loaded config is read-only"
    return err["msg"]


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- editor JSON Schema ---------------------------------------------------------------------------

class _EditorSchema(GenerateJsonSchema):
    """Draft 2020-12 for editors: no generated per-field titles (the descriptions say it all)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def json_schema(cls: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a section's *input*: descriptions, bounds, defaults,
    enums, ``additionalProperties: false``."""
    return cls.model_json_schema(schema_generator=_EditorSchema, mode="validation")


# ---- YAML -----------------------------------------------------------------------------------------

def interpolate_env(value: Any, file: str | None, key: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate_env(v, file, key_path(key, [str(k)])) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(file, key, f"environment variable ${{{name}}} is not set "
                                         f"(set it, or write ${{{name}:-default}})")
        return _ENV.sub(sub, value)
    return value


def read_yaml(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML file's top-level mapping with ``overrides`` merged on top; clear errors otherwise."""
    import yaml

    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"cannot read the file: {e}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "", f"expected a mapping at the top level, got {_show(raw)}")
    return deep_merge(raw, overrides) if overrides else raw


def _yaml_problem(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return str(e)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


__all__ = [
    "ConfigError", "ConfigModel", "FloatPair", "Frozen", "FrozenDict", "Items",
    "OneOrMany", "Pair", "PathStr", "Pattern", "config_error", "context_of", "deep_merge", "interpolate_env",
    "json_schema", "key_path", "load_section", "read_yaml", "resolve_path", "rule_error",
]
