from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gpucloud.common import DateTimeIn, MoneyIn, MoneyOut, PositiveMoneyIn, RequestModel


class AccountCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, examples=["acme-research"])
    balance: MoneyIn | None = None


class AccountCreated(BaseModel):
    id: str
    name: str
    balance: MoneyOut
    api_key: str = Field(description="Shown only in this response; stored hashed.")


class AccountOut(BaseModel):
    id: str
    name: str
    balance: MoneyOut
    reserved: MoneyOut
    spent: MoneyOut


class DepositIn(RequestModel):
    model_config = ConfigDict(extra="forbid")
    amount: PositiveMoneyIn


class ApiKeyCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")
    expires_at: DateTimeIn | None = None


class ApiKeyCreated(BaseModel):
    id: str
    api_key: str
    expires_at: str | None = None
