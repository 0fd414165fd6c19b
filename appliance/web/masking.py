"""Secrets in config objects the API hands out and takes back.

A field is secret when the schema marks it (`json_schema_extra={"secret": True}`), so a
new secret field needs no change here. Going out, each set secret becomes MASK; coming
back, a MASK keeps the stored value of the same field of the same item (uplinks are
matched by name, other lists by position), so a form can send back what it was given.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

# Ten characters: a masked value still fits every secret field's length limits, so a
# masked config is a valid instance of the schema that describes it.
MASK = "**********"


def _is_secret(model: type[BaseModel], field: str) -> bool:
    extra = model.model_fields[field].json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True


def _models_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model, is_list) for `Model`, `Model | None` and `list[Model]` annotations."""
    origin = typing.get_origin(annotation)
    if origin is list:
        inner, _ = _models_in(typing.get_args(annotation)[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found, is_list = _models_in(arg)
            if found is not None:
                return found, is_list
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def secret_values(model: BaseModel) -> list[str]:
    """Every set secret of `model`, at any depth (for the log filter and leak tests)."""
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if _is_secret(type(model), name):
            if isinstance(value, str):
                out.append(value)
            continue
        sub, is_list = _models_in(field.annotation)
        if sub is None or value is None:
            continue
        for item in value if is_list else [value]:
            out += secret_values(item)
    return out


def mask(model_cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` (a dump of `model_cls`) with every set secret replaced by MASK."""
    out = dict(data)
    for name, field in model_cls.model_fields.items():
        value = out.get(name)
        if value is None:
            continue
        if _is_secret(model_cls, name):
            out[name] = MASK
            continue
        sub, is_list = _models_in(field.annotation)
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            out[name] = [mask(sub, v) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            out[name] = mask(sub, value)
    return out


def _match(old: list[Any], index: int, item: Any) -> Any:
    """The stored item that `item` (the `index`-th sent back) stands for."""
    name = item.get("name") if isinstance(item, dict) else None
    if name is not None:
        return next((o for o in old if getattr(o, "name", None) == name), None)
    return old[index] if index < len(old) else None


def unmask(model_cls: type[BaseModel], data: Any, old: BaseModel | None) -> Any:
    """`data` (as sent by a client) with each MASK replaced by the value `old` holds.

    A MASK with nothing stored behind it is dropped (the field takes its default), so a
    mask can never become a stream key.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in model_cls.model_fields.items():
        if name not in out:
            continue
        value = out[name]
        stored = getattr(old, name, None) if old is not None else None
        if _is_secret(model_cls, name):
            if value == MASK:
                if isinstance(stored, str):
                    out[name] = stored
                else:
                    del out[name]
            continue
        sub, is_list = _models_in(field.annotation)
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            olds = stored if isinstance(stored, list) else []
            out[name] = [unmask(sub, v, _match(olds, i, v)) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            out[name] = unmask(sub, value, stored if isinstance(stored, BaseModel) else None)
    return out
