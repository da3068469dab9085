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

from streamplat.errors import BadRequest, UnsupportedMediaType, ValidationFailed

S = TypeVar("S", bound=msgspec.Struct)


def check_json_content_type(content_type: str | None) -> None:
    """Refuse (415) a body that does not say it is JSON: `application/json` or `application/*+json`,
    any parameters (`; charset=utf-8`) allowed. A body without a Content-Type is refused too: a
    form or plain text posted by mistake must not be parsed as JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    shown = f"'{media_type}'" if media_type else "no Content-Type"
    raise UnsupportedMediaType(f"Request body must be JSON (Content-Type: application/json), got {shown}")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (400 otherwise)."""
    if not raw.strip():
        raise BadRequest("Request body is empty; a JSON object is required")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequest("Malformed JSON: the body is not valid UTF-8") from None
    except RecursionError:
        # msgspec recurses once per nesting level; no body of this API nests more than twice.
        raise BadRequest("Malformed JSON: nested too deeply") from None
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
        # No text column can hold NUL on PostgreSQL (asyncpg fails the query: once a 500), and
        # no name, title or email needs it: refused on every database alike.
        if "\x00" in value:
            problems.append("must not contain NUL characters (\\u0000)")
        # fullmatch: with re.search, `^...$` accepts a trailing newline ("bob\n").
        if t.pattern is not None and not problems and not re.fullmatch(t.pattern, value):
            problems.append(str((extra or {}).get("message", "has an invalid format")))
        # Meta(extra={"printable": True}): no control, format or other invisible characters, so
        # two values that look the same are the same ("\x7fx@y.zz" is not "x@y.zz").
        if (extra or {}).get("printable") and not problems and not value.isprintable():
            problems.append(str((extra or {}).get("message", "must not contain invisible characters")))
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


def _allows_null(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.Metadata):
        return _allows_null(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return any(isinstance(x, msgspec.inspect.NoneType) for x in t.types)
    return isinstance(t, msgspec.inspect.NoneType | msgspec.inspect.AnyType)


def validate(model: type[S], data: dict[str, Any]) -> S:
    """Build `model` from `data`, or raise ValidationFailed naming every invalid field."""
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType)
    annotations = {f.name: f.type for f in msgspec.structs.fields(model)}
    details: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    for field in info.fields:
        if field.encode_name not in data:
            if field.required:
                details[field.encode_name] = ["is required"]
            continue
        value = data[field.encode_name]
        # null only where the schema shows it (a `| None` field); an optional field is left out,
        # not sent as null.
        if value is None and not _allows_null(field.type):
            details[field.encode_name] = ["is required" if field.required else "must not be null"]
            continue
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
        content_type = self.asgi_connection.headers.get("content-type")
        # An empty body without a Content-Type is a missing body (400 below), not a wrong type.
        if content_type or value.strip():
            check_json_content_type(content_type)
        return validate(self.model_type, decode_json_object(value))
