"""Canonical records: what every source maps into and every channel receives (see DESIGN.md)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

DOMAINS = ("product", "price", "inventory", "customer", "order_status")


def _text(value: Any) -> Any:
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return value


def _money(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise ValueError("is not an amount")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite amount")
    return format(amount, "f")


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


Text = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
OptionalText = Annotated[str | None, BeforeValidator(_text)]
Money = Annotated[str, BeforeValidator(_money)]
UtcDatetime = Annotated[datetime | None, BeforeValidator(_utc)]


class Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Product(Canonical):
    sku: Text
    title: OptionalText = None
    description: OptionalText = None
    status: Literal["active", "draft", "discontinued"] = "active"
    attributes: dict[str, Any] = Field(default_factory=dict)

    def key(self) -> str:
        return self.sku


class Price(Canonical):
    sku: Text
    price_list: OptionalText = None
    currency: Annotated[str, BeforeValidator(_text), Field(pattern=r"^[A-Z]{3}$")]
    amount: Money
    effective_from: UtcDatetime = None
    effective_to: UtcDatetime = None

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def key(self) -> str:
        return f"{self.sku}@{self.price_list}" if self.price_list else self.sku


class Inventory(Canonical):
    sku: Text
    location: Text
    on_hand: int
    reserved: int = 0
    available: int | None = None  # on_hand - reserved, floored at 0, unless the source gives it

    @model_validator(mode="before")
    @classmethod
    def _available(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("available") is None:
            try:
                on_hand, reserved = int(data.get("on_hand")), int(data.get("reserved") or 0)
            except (TypeError, ValueError):
                return data  # field validation reports the bad value
            data = {**data, "available": max(on_hand - reserved, 0)}
        return data

    def key(self) -> str:
        return f"{self.sku}@{self.location}"


class Customer(Canonical):
    account: Text
    name: OptionalText = None
    tier: OptionalText = None
    price_list: OptionalText = None
    credit_status: OptionalText = None
    tax_exempt: bool = False

    def key(self) -> str:
        return self.account


class OrderLine(Canonical):
    sku: Text
    ordered: int
    shipped: int = 0


class OrderStatus(Canonical):
    order: Text
    status: Text
    lines: list[OrderLine] = Field(default_factory=list)
    tracking: list[str] = Field(default_factory=list)

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_list(cls, value: Any) -> Any:
        if value is None or value == "":
            return []
        return [value] if isinstance(value, str) else value

    def key(self) -> str:
        return self.order


MODELS: dict[str, type[Canonical]] = {
    "product": Product,
    "price": Price,
    "inventory": Inventory,
    "customer": Customer,
    "order_status": OrderStatus,
}


def required_fields(domain: str) -> list[str]:
    """Canonical fields a mapping must provide for this domain."""
    return [name for name, info in MODELS[domain].model_fields.items() if info.is_required()]
