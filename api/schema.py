"""Checking request bodies and query strings against the route table's JSON schemas (the
subset the table uses), with errors that name the field; and the OpenAPI 3 document built
from the same table."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["Invalid", "check", "coerce_query", "openapi"]


class Invalid(ValueError):
    """A request does not match its schema; the message names the field."""


# Query values as JSON writes numbers: no "1_000", no spaces, no other scripts' digits.
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def check(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    kind = schema.get("type")
    if kind is not None:
        expected = _TYPES[kind]
        if not isinstance(value, expected) or (isinstance(value, bool) and kind != "boolean"):
            raise Invalid(f"{where}: must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise Invalid(f"{where}: must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise Invalid(f"{where}: must not be empty")
        if len(value) > schema.get("maxLength", 1 << 30):
            raise Invalid(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise Invalid(f"{where}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"{where}: must be a finite number")
        if value < schema.get("minimum", float("-inf")):
            raise Invalid(f"{where}: must be at least {schema['minimum']}")
        if value > schema.get("maximum", float("inf")):
            raise Invalid(f"{where}: must be at most {schema['maximum']}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30):
            raise Invalid(f"{where}: wrong number of items ({len(value)})")
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise Invalid(f"{where}.{name}: is required")
        for name, item in value.items():
            if name not in properties:
                if schema.get("additionalProperties", True) is False:
                    raise Invalid(f"{where}.{name}: is not a known field")
                continue
            check(item, properties[name], f"{where}.{name}")


def coerce_query(raw: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Query parameters, each checked against its schema (numbers parsed); unknown ones and
    repeated ones are refused."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in schemas:
            raise Invalid(f"query.{name}: is not a known parameter")
        if not isinstance(value, str):
            raise Invalid(f"query.{name}: given more than once")
        schema = schemas[name]
        parsed: Any = value
        if schema.get("type") in ("integer", "number"):
            form = _INTEGER if schema["type"] == "integer" else _NUMBER
            if not form.fullmatch(value):
                kind = "a whole number" if schema["type"] == "integer" else "a number"
                raise Invalid(f"query.{name}: must be {kind} in decimal digits")
            parsed = int(value) if schema["type"] == "integer" else float(value)
        check(parsed, schema, f"query.{name}")
        out[name] = parsed
    return out


ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "title"],
            "properties": {"code": {"type": "string"}, "title": {"type": "string"}},
        }
    },
}


def openapi(routes: Any, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string",
             "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]  # fmt: skip
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in route.query.items()
        ]
        if route.sensitive:
            parameters.append({
                "name": "X-Wire-TOTP", "in": "header", "required": True,
                "description": "a fresh TOTP code: this call needs one even with a session "
                               "(the engine checks it)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 32},
            })  # fmt: skip
        responses: dict[str, Any] = {
            str(route.status): {
                "description": "done",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "400": _error(
                "the request does not match the schema, or its body is missing or not strict "
                "JSON (no NaN or Infinity); the title names the field"
            ),
            "404": _error("no such route or object"),
            "405": _error("the route does not take this method"),
            "409": _error("conflicts with the node's state"),
            "411": _error("a chunked body this server cannot frame: send a Content-Length"),
            "413": _error("the request body is too large"),
            "415": _error("the request body is not JSON"),
            "422": _error("the engine refused the command; the title says why"),
            "429": _error(
                "after wrong TOTP codes, the account's next code is taken only after a delay "
                "(at most the engine's code_delay_max_seconds), or a journal verification is "
                "running already"
            ),
            "500": _error("a failure inside the node; the title gives an incident id for its log"),
            "501": _error("the engine side of this command is not built yet"),
            "503": _error("the engine or the audit log is unavailable"),
        }
        if not route.public:
            responses["401"] = _error("no valid session: log in")
            responses["403"] = _error("the role may not do this, or a fresh TOTP code is needed")
        else:
            responses["401"] = _error("wrong username, password or code")
            responses["403"] = _error("refused")
        operation: dict[str, Any] = {
            "operationId": route.name.replace(" ", "-"),
            "summary": route.summary,
            "description": f"`mpc_operator {route.name}`. Roles: {', '.join(route.roles)}."
            + (" Needs a fresh TOTP code (X-Wire-TOTP)." if route.sensitive else "")
            + (" Audited before it runs; refused if the audit log is down."
               if route.changes else ""),
            "parameters": parameters,
            "responses": responses,
            "security": [] if route.public else [{"session": []}],
        }  # fmt: skip
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": route.body}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "wire-mpc control API",
            "version": version,
            "description": "The operators' API of one wire-mpc node, on a Unix socket.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR},
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
