"""Request body parsing that reports every invalid field at once.

msgspec stops at the first error, but the spec's 422 body names every invalid field, so
bodies are decoded to a plain object first and each field of the target Struct is checked
on its own. Messages come from the field's constraints (or `Meta(extra={"message": ...})`
for a pattern), phrased for people: "minimum 6 characters required".
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar.dto import MsgspecDTO

from streamplat.errors import BadRequest, ValidationFailed

S = TypeVar("S", bound=msgspec.Struct)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (400 otherwise)."""
    if not raw.strip():
        raise BadRequest("Request body is empty; a JSON object is required")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    return data


def _type_name(t: msgspec.inspect.Type) -> str:
    names = {
        msgspec.inspect.StrType: "a string",
        msgspec.inspect.IntType: "an integer",
        msgspec.inspect.FloatType: "a number",
        msgspec.inspect.BoolType: "true or false",
    }
    for cls, name in names.items():
        if isinstance(t, cls):
            return name
    return "a valid value"


def _messages(t: msgspec.inspect.Type, value: Any, extra: dict[str, Any] | None = None) -> list[str] | None:
    """Human messages for `value` not fitting `t` (empty when it fits, None for types not known here)."""
    if isinstance(t, msgspec.inspect.Metadata):  # Annotated[..., Meta(extra=...)]
        return _messages(t.type, value, {**(extra or {}), **(t.extra or {})})
    if isinstance(t, msgspec.inspect.UnionType):
        if value is None and any(isinstance(x, msgspec.inspect.NoneType) for x in t.types):
            return []
        options = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        if len(options) == 1:
            return _messages(options[0], value, extra)
    if isinstance(t, msgspec.inspect.LiteralType):
        if value in t.values:
            return []
        return ["must be one of: " + ", ".join(str(v) for v in t.values)]
    if isinstance(t, msgspec.inspect.StrType):
        if not isinstance(value, str):
            return ["must be a string"]
        problems = []
        if t.min_length is not None and len(value) < t.min_length:
            problems.append(
                "is required"
                if t.min_length == 1 and not value
                else f"minimum {t.min_length} characters required"
            )
        if t.max_length is not None and len(value) > t.max_length:
            problems.append(f"maximum {t.max_length} characters allowed")
        if t.pattern is not None and not problems and not re.search(t.pattern, value):
            problems.append(str((extra or {}).get("message", "has an invalid format")))
        return problems
    if isinstance(t, msgspec.inspect.BoolType):
        return [] if isinstance(value, bool) else ["must be true or false"]
    if isinstance(t, msgspec.inspect.IntType):
        if isinstance(value, bool) or not isinstance(value, int):
            return ["must be an integer"]
        problems = []
        if t.ge is not None and value < t.ge:
            problems.append(f"must be at least {t.ge}")
        if t.le is not None and value > t.le:
            problems.append(f"must be at most {t.le}")
        return problems
    return None


def validate(model: type[S], data: dict[str, Any]) -> S:
    """Build `model` from `data`, or raise ValidationFailed naming every invalid field."""
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    annotations = {f.name: f.type for f in msgspec.structs.fields(model)}
    details: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    for field in info.fields:
        present = field.encode_name in data and data[field.encode_name] is not None
        if not present:
            if field.required:
                details[field.encode_name] = ["is required"]
            continue
        value = data[field.encode_name]
        problems = _messages(field.type, value)
        if problems is None:
            try:
                msgspec.convert(value, annotations[field.name], strict=False)
                problems = []
            except msgspec.ValidationError as exc:
                problems = [f"must be {_type_name(field.type)} ({str(exc).split(' - at')[0]})"]
        if problems:
            details[field.encode_name] = problems
        else:
            clean[field.encode_name] = value
    if details:
        raise ValidationFailed(details)
    try:
        return msgspec.convert(clean, model)
    except msgspec.ValidationError as exc:  # a constraint _messages does not know yet
        raise ValidationFailed({"body": [str(exc)]}) from None


class ValidatedBody(MsgspecDTO[S]):
    """A DTO that decodes request bodies with `validate`, so 422s name every bad field.

    Use as `@post(dto=ValidatedBody[StreamCreate], return_dto=None)`; the OpenAPI schema still
    shows the Struct.
    """

    def decode_bytes(self, value: bytes) -> Any:
        return validate(self.model_type, decode_json_object(value))
