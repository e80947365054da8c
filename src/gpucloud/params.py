"""Query parameters of request-only routes, read and validated as FastAPI would.

A route whose endpoint takes only the Request skips FastAPI's request handler
(`routing.PrefixRoute`), and with it the handler's parameter solving. The polled reads with a
query parameter (logs, events, transactions) read theirs here instead: each value validated
by a pydantic TypeAdapter of the type and bounds the route used to declare, the last of
repeated values counting, a missing one taking its default, and every bad one reported
together in one RequestValidationError with `loc` ["query", name], in declaration order: the
same 422 bytes. The route declares the same parameters in its OpenAPI operation
(`openapi_extra`), built from the same pydantic type as FastAPI built them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError


@dataclass(frozen=True)
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


def read(request: Request, *params: QueryParam) -> list[Any]:
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
    return values
