"""Provider configs: each driver describes its own with a pydantic model; registration turns a
bad one into one readable 422 message."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], config: dict[str, Any]) -> M:
    """The typed config, or ValueError with a one-line reason per problem."""
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise ValueError("; ".join(problems)) from None
