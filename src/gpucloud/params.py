"""Query parameters of request-only routes, read and validated as FastAPI would.

A route whose endpoint takes only the Request skips FastAPI's request handler
(`routing.PrefixRoute`), and with it the handler's parameter solving. The polled reads with a
query parameter (logs, events, transactions) read theirs here instead: each value validated
by a pydantic TypeAdapter of the type and bounds the route used to declare, the last of
repeated values counting, a missing one taking its default, and every bad one reported
together in one RequestValidationError with `loc` ["query", name], in declaration order: the
same 422 bytes. The route declares the same parameters in its OpenAPI operation
(`openapi_extra`), built from the same pydantic type as FastAPI built them.

Polling clients send the same query string again and again (`?last=20`), so the values read
from a query string are kept, keyed by its exact bytes and the parameters asked for: parsing
it and validating each value was ~10% of a logs request's CPU. Only good values are kept
(a bad query string is read and reported afresh), only for short query strings, at most
`_KEPT` of them (then it starts over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of the values kept below
class QueryParam:
    name: str
    adapter: TypeAdapter
    default: Any
    doc: dict[str, Any]  # its OpenAPI parameter object


def param(name: str, annotation: Any, default: Any, description: str,
          **bounds: Any) -> QueryParam:
    """`name: annotation = Query(default, description=…, **bounds)`, as one object: the
    validator, and the parameter object FastAPI would have put in the OpenAPI document (the
    same schema, from the same pydantic type, titled the way FastAPI titles a parameter)."""
    adapter = TypeAdapter(Annotated[annotation, Field(
        description=description, title=name.replace("_", " ").title(), **bounds)])
    schema = adapter.json_schema()
    if default is not None:
        schema["default"] = default
    return QueryParam(name, adapter, default, {
        "name": name, "in": "query", "required": False, "schema": schema,
        "description": description})


def openapi(*declared: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` declaring these parameter objects (path or query)."""
    return {"parameters": list(declared)}


_KEPT = 4096
_LONGEST_KEPT = 256  # bytes of query string
_read_before: dict[tuple, tuple] = {}


def read(request: Request, *params: QueryParam) -> tuple[Any, ...]:
    """Each parameter's value (its default when absent), in the order asked; a
    `RequestValidationError` with every bad one."""
    raw = request.scope.get("query_string", b"")
    key = (raw, params)
    values = _read_before.get(key)
    if values is None:
        values = _validated(request, params)
        if len(raw) <= _LONGEST_KEPT:
            if len(_read_before) >= _KEPT:
                _read_before.clear()
            _read_before[key] = values
    return values


def _validated(request: Request, params: tuple[QueryParam, ...]) -> tuple[Any, ...]:
    values: list[Any] = []
    errors: list[dict[str, Any]] = []
    query = request.query_params
    for p in params:
        raw = query.get(p.name)
        if raw is None:
            values.append(p.default)
            continue
        try:
            values.append(p.adapter.validate_python(raw))
        except ValidationError as exc:
            errors.extend({**e, "loc": ("query", p.name, *e["loc"])}
                          for e in exc.errors(include_url=False))
    if errors:
        raise RequestValidationError(errors)
    return tuple(values)
