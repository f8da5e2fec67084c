"""Raw ERP record -> canonical record, by the field mapping in the domain's TOML section."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from connector.config import DomainConfig, FieldSpec
from connector.models import MODELS
from connector.timestamps import TimestampError, parse_timestamp

MISSING = object()


class MappingError(Exception):
    """A record that cannot become a canonical one; it goes to quarantine with `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class BadTimestamp(Exception):
    """A record's updated field is missing or not a date: the watermark cannot trust the page."""


@dataclass(frozen=True)
class Mapped:
    key: str
    updated: datetime | None
    record: dict  # the canonical record, JSON-ready
    hash: str


def dig(record: Any, path: str) -> Any:
    """The value at a dotted path ("stock.qty", "lines.0.sku"), or MISSING."""
    node = record
    for part in path.split(".") if path else []:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def record_ref(raw: Any, domain_cfg: DomainConfig) -> str:
    """A name for a raw record in quarantine: its configured key field, else a hash of it."""
    if domain_cfg.record.key:
        value = dig(raw, domain_cfg.record.key)
        if value is not MISSING and value is not None:
            return str(value)
    return "sha256:" + raw_hash(raw)[:16]


def raw_hash(raw: Any) -> str:
    """A stable hash of a raw record, to recognise the same bad record when it is read again."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def updated_of(raw: Any, domain_cfg: DomainConfig) -> datetime | None:
    """The record's modification time as aware UTC; BadTimestamp if configured but unusable."""
    path = domain_cfg.record.updated
    if not path:
        return None
    value = dig(raw, path) if isinstance(raw, dict) else MISSING
    fmt = domain_cfg.record.updated_format or domain_cfg.request.modified_format
    try:
        if value is MISSING:
            raise TimestampError(f"has no {path} field")
        return parse_timestamp(value, fmt, domain_cfg.request.timezone)
    except TimestampError as exc:
        raise BadTimestamp(f"record {record_ref(raw, domain_cfg)}: {path} {exc}") from None


def map_record(raw: Any, domain: str, domain_cfg: DomainConfig) -> Mapped:
    """Map and validate one raw record; MappingError says why it cannot be used."""
    updated = updated_of(raw, domain_cfg)
    if not isinstance(raw, dict):
        raise MappingError("NOT_AN_OBJECT", f"a record must be a JSON object, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for name, spec in domain_cfg.fields.items():
        value = _field_value(raw, name, spec)
        if value is not MISSING:
            values[name] = value
    try:
        model = MODELS[domain].model_validate(values)
    except ValidationError as exc:
        problems = []
        reason = "VALIDATION"
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or domain
            if error["type"] == "missing":
                reason = "MISSING_FIELD"
                problems.append(f"{field}: no value (mapped from {_path_of(domain_cfg, field)})")
            else:
                problems.append(f"{field}: {error['msg']} (got {error.get('input')!r})")
        raise MappingError(reason, "; ".join(problems)) from None
    record = model.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Mapped(model.key(), updated, record, digest)


def _path_of(domain_cfg: DomainConfig, field: str) -> str:
    spec = domain_cfg.fields.get(field.split(".")[0])
    return spec.path if spec and spec.path else "nothing"


def _field_value(raw: dict, name: str, spec: FieldSpec) -> Any:
    value = dig(raw, spec.path) if spec.path else MISSING
    if value is MISSING or value is None:
        return MISSING if spec.default is None else spec.default
    if spec.map is not None:
        mapped = spec.map.get(str(value), MISSING)
        if mapped is MISSING:
            if spec.default is None:
                raise MappingError(
                    "BAD_VALUE", f"{name}: {value!r} from {spec.path} is not in its value map ({', '.join(spec.map)})"
                )
            mapped = spec.default
        value = mapped
    return _convert(value, name, spec)


def _convert(value: Any, name: str, spec: FieldSpec) -> Any:
    if spec.type is None:
        return value
    try:
        if spec.type == "str":
            return value if isinstance(value, str) else str(value)
        if spec.type == "int":
            if isinstance(value, bool):
                raise ValueError
            number = Decimal(str(value).strip())
            if number != number.to_integral_value():
                raise ValueError
            return int(number)
        if spec.type == "decimal":
            if isinstance(value, bool):
                raise ValueError
            number = Decimal(str(value).strip())
            if not number.is_finite():
                raise ValueError
            return format(number, "f")
        if spec.type == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "y", "on"):
                return True
            if text in ("0", "false", "no", "n", "off", ""):
                return False
            raise ValueError
    except (ValueError, InvalidOperation):
        raise MappingError("BAD_VALUE", f"{name}: {value!r} from {spec.path} is not a {spec.type}") from None
    return value
