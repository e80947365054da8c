"""Provider configs: each driver describes its own with a pydantic model; registration turns a
bad one into one readable 422 message."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError

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


def _range_text(v: Any) -> Any:
    if isinstance(v, str):
        lo, sep, hi = v.partition("-")
        if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
            raise ValueError("port_range must look like 30000-32767")
        return (int(lo), int(hi))
    return v


def _range(v: tuple[int, int]) -> tuple[int, int]:
    if not 1024 <= v[0] <= v[1] <= 65535:
        raise ValueError("port_range must be within 1024-65535, low end first")
    return v


# Host ports the control plane may hand out for a provider: `[30000, 32767]` or "30000-32767".
PortRange = Annotated[tuple[int, int], BeforeValidator(_range_text), AfterValidator(_range)]
