"""The TOML configuration: its shape, its validation, and errors that name the key and line."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from connector.durations import parse_duration
from connector.models import DOMAINS, MODELS, required_fields
from connector.toml_lines import KeyPath, key_lines, line_of

EX_CONFIG = 78


# -- value types --------------------------------------------------------------------


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration", "{value} is not a duration: write it as a string like \"30s\", \"5m\" or \"1h\"",
            {"value": repr(value)},
        )
    try:
        return parse_duration(value)
    except ValueError:
        raise PydanticCustomError(
            "duration", '"{value}" is not a duration like 30s, 5m or 1h', {"value": value}
        ) from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _env_name(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise PydanticCustomError(
            "env_name", "{value} is not an environment variable name", {"value": repr(value)}
        )
    env = (info.context or {}).get("env", os.environ)
    if not env.get(value):
        raise PydanticCustomError(
            "env_missing",
            "environment variable {name} is not set (secrets come from the environment, never from this file)",
            {"name": value},
        )
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]


def _http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("url", "{value} is not a URL", {"value": repr(value)})
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise PydanticCustomError(
            "url", '"{value}" is not an http:// or https:// URL', {"value": value}
        )
    return value.rstrip("/")


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _time_zone(value: Any) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise PydanticCustomError(
            "timezone", '"{value}" is not a time zone like UTC or Europe/Berlin', {"value": value}
        ) from None
    return value


TimeZoneName = Annotated[str, BeforeValidator(_time_zone)]


def _listen_address(value: Any) -> str:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PydanticCustomError(
            "listen", '"{value}" is not a host:port address like 127.0.0.1:9464', {"value": value}
        )
    return str(value)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- [daemon] -----------------------------------------------------------------------


class DaemonConfig(Section):
    state: str = "erpsync.db"
    metrics_listen: Annotated[str, BeforeValidator(_listen_address)] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Duration = timedelta(seconds=10)


# -- [erp] --------------------------------------------------------------------------


class NoAuth(Section):
    type: Literal["none"]


class BearerAuth(Section):
    type: Literal["bearer"]
    token_env: EnvName


class BasicAuth(Section):
    type: Literal["basic"]
    username: str
    password_env: EnvName


class HeaderAuth(Section):
    """A header built from a template, e.g. ERPNext's `token {key}:{secret}`."""

    type: Literal["header"]
    name: str = "Authorization"
    value: str
    env: dict[str, EnvName] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _placeholders_named(self) -> HeaderAuth:
        placeholders = set(re.findall(r"{(\w+)}", self.value))
        if not placeholders:
            raise PydanticCustomError(
                "secret_in_file",
                "the header value holds no {{placeholder}}: put the secret in an environment "
                "variable and name it in env, e.g. value = \"token {{key}}:{{secret}}\"",
            )
        missing = sorted(placeholders - set(self.env))
        if missing:
            raise PydanticCustomError(
                "placeholder_unnamed",
                "{names} in value have no environment variable in env",
                {"names": ", ".join("{" + name + "}" for name in missing)},
            )
        return self


Auth = Annotated[Union[NoAuth, BearerAuth, BasicAuth, HeaderAuth], Discriminator("type")]


class ErpConfig(Section):
    kind: Literal["rest"] = "rest"
    base_url: HttpUrl
    max_requests_per_second: float = Field(default=5, gt=0)
    max_concurrency: int = Field(default=2, ge=1, le=64)
    timeout: Duration = timedelta(seconds=30)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth = NoAuth(type="none")


# -- [domains.*] --------------------------------------------------------------------


class NoPagination(Section):
    style: Literal["none"]


class PagePagination(Section):
    style: Literal["page"]
    page_param: str = "page"
    limit_param: str | None = "limit"
    first_page: int = 1


class OffsetPagination(Section):
    style: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"


class CursorPagination(Section):
    style: Literal["cursor"]
    cursor_param: str = "cursor"
    next_cursor: str = "next_cursor"
    limit_param: str | None = "limit"


class LinkHeaderPagination(Section):
    style: Literal["link_header"]
    limit_param: str | None = "limit"


class ODataPagination(Section):
    style: Literal["odata"]
    next_link: str = "@odata.nextLink"


Pagination = Annotated[
    Union[
        NoPagination,
        PagePagination,
        OffsetPagination,
        CursorPagination,
        LinkHeaderPagination,
        ODataPagination,
    ],
    Discriminator("style"),
]



def _modified_format(value: Any) -> str:
    if value in ("iso8601", "epoch_s", "epoch_ms") or (isinstance(value, str) and "%" in value):
        return value
    raise PydanticCustomError(
        "modified_format",
        '"{value}" is not a timestamp format: use iso8601, epoch_s, epoch_ms or a strftime '
        'pattern like "%Y-%m-%d %H:%M:%S"',
        {"value": value},
    )


class RequestConfig(Section):
    path: str
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    page_size: int = Field(default=100, ge=1, le=100_000)
    max_pages: int = Field(default=10_000, ge=1)
    records: str = "data"
    modified_param: str | None = None
    modified_format: Annotated[str, BeforeValidator(_modified_format)] = "iso8601"
    timezone: TimeZoneName = "UTC"
    pagination: Pagination = NoPagination(style="none")


class RecordConfig(Section):
    key: str | None = None
    updated: str | None = None
    updated_format: Annotated[str, BeforeValidator(_modified_format)] | None = None


class FieldSpec(Section):
    path: str | None = None
    type: Literal["str", "int", "decimal", "bool"] | None = None
    map: dict[str, Any] | None = None
    default: Any = None

    @model_validator(mode="after")
    def _has_a_source(self) -> FieldSpec:
        if self.path is None and self.default is None:
            raise PydanticCustomError("field_spec", "a field needs a path, a default, or both")
        return self


def _field_spec(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class DomainConfig(Section):
    interval: Duration
    lookback: Duration = timedelta(minutes=1)
    full_resync: Duration | None = None
    max_delete_fraction: float = Field(default=0.5, gt=0, le=1)
    record: RecordConfig = RecordConfig()
    fields: dict[str, Annotated[FieldSpec, BeforeValidator(_field_spec)]]
    request: RequestConfig

    @field_validator("interval")
    @classmethod
    def _interval_floor(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=0.1):
            raise PydanticCustomError("interval", "an interval below 100ms would hammer the ERP")
        return value

    @model_validator(mode="after")
    def _updated_field_for_watermark(self) -> DomainConfig:
        if self.request.modified_param and not self.record.updated:
            raise PydanticCustomError(
                "record_updated",
                "request.modified_param is set, so record.updated must name the field that "
                "holds each record's modification time",
            )
        return self


class DomainsConfig(Section):
    product: DomainConfig | None = None
    price: DomainConfig | None = None
    inventory: DomainConfig | None = None
    customer: DomainConfig | None = None
    order_status: DomainConfig | None = None

    @field_validator(*DOMAINS)
    @classmethod
    def _fields_match_canonical(cls, value: DomainConfig | None, info: ValidationInfo):
        if value is None:
            return value
        domain = info.field_name
        known = MODELS[domain].model_fields
        unknown = sorted(set(value.fields) - set(known))
        missing = [name for name in required_fields(domain) if name not in value.fields]
        problems = []
        if unknown:
            problems.append(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a field of {domain}")
        if missing:
            problems.append(f"{', '.join(missing)} must be mapped")
        if problems:
            raise PydanticCustomError(
                "fields",
                "{problems} (fields of {domain}: {known})",
                {"problems": "; ".join(problems), "domain": domain, "known": ", ".join(known), "subpath": "fields"},
            )
        return value

    def items(self) -> list[tuple[str, DomainConfig]]:
        """The configured domains, in canonical order."""
        return [(name, getattr(self, name)) for name in DOMAINS if getattr(self, name) is not None]


# -- [channels.*] -------------------------------------------------------------------


def _subscribed_domains(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, list) or not value:
        raise PydanticCustomError("domains", "list at least one domain, e.g. [\"inventory\"]")
    configured = (info.context or {}).get("domains")
    for name in value:
        if name not in DOMAINS:
            raise PydanticCustomError(
                "domains", '"{name}" is not a domain ({known})', {"name": name, "known": ", ".join(DOMAINS)}
            )
        if configured is not None and name not in configured:
            raise PydanticCustomError(
                "domains", '"{name}" has no [domains.{name}] section to read it from', {"name": name}
            )
    if len(set(value)) != len(value):
        raise PydanticCustomError("domains", "a domain is listed twice")
    return value


class WebhookChannel(Section):
    kind: Literal["webhook"]
    url: HttpUrl
    domains: Annotated[list[str], BeforeValidator(_subscribed_domains)]
    max_requests_per_second: float = Field(default=2, gt=0)
    burst: int = Field(default=1, ge=1)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    timeout: Duration = timedelta(seconds=30)
    secret_env: EnvName | None = None


Channel = Annotated[Union[WebhookChannel], Discriminator("kind")]


# -- the whole file -----------------------------------------------------------------


class Config(Section):
    daemon: DaemonConfig = DaemonConfig()
    erp: ErpConfig
    domains: DomainsConfig
    channels: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")], Channel]

    # Set by load_config: where the file lives, so relative paths resolve next to it.
    base_dir: Path = Path(".")

    @field_validator("domains")
    @classmethod
    def _some_domain(cls, value: DomainsConfig) -> DomainsConfig:
        if not value.items():
            raise PydanticCustomError("no_domains", "configure at least one domain, e.g. [domains.inventory]")
        return value

    @field_validator("channels")
    @classmethod
    def _some_channel(cls, value: dict) -> dict:
        if not value:
            raise PydanticCustomError("no_channels", "configure at least one channel, e.g. [channels.store]")
        return value

    def state_path(self) -> Path:
        """The state database, relative paths taken from the configuration file's folder."""
        path = Path(self.daemon.state)
        return path if path.is_absolute() else self.base_dir / path

    def channels_for(self, domain: str) -> list[str]:
        """Names of the channels that subscribe to a domain."""
        return [name for name, channel in self.channels.items() if domain in channel.domains]


# -- loading and errors -------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def located(self, file: Path | str) -> str:
        """The problem as `file:line: key: message`, the way compilers point at a line."""
        where = f"{file}:{self.line}" if self.line else str(file)
        return f"{where}: {self}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason."""

    def __init__(self, file: Path, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(problem.located(file) for problem in problems))


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [ConfigProblem("", f"cannot read the file: {exc}")]) from None
    return parse_config(text, path, env)


def parse_config(text: str, path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Validate TOML text as a configuration; `path` names it in errors and anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "not valid TOML"
        raise ConfigError(path, [ConfigProblem("", f"not valid TOML: {message}", line)]) from None
    context = {
        "env": os.environ if env is None else env,
        "domains": set(data.get("domains", {})) if isinstance(data.get("domains"), dict) else None,
    }
    data.pop("base_dir", None)
    try:
        config = Config.model_validate(data, context=context)
    except ValidationError as exc:
        lines = key_lines(text)
        problems = [_problem(error, data, lines) for error in exc.errors()]
        raise ConfigError(path, sorted(set(problems), key=lambda p: (p.line or 0, p.path))) from None
    return config.model_copy(update={"base_dir": path.resolve().parent})


def _problem(error: dict, data: dict, lines: dict[KeyPath, int]) -> ConfigProblem:
    path = _key_path(error["loc"], data)
    ctx = error.get("ctx") or {}
    if ctx.get("subpath"):
        path = path + tuple(ctx["subpath"].split("."))
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path = path + (ctx["discriminator"].strip("'\""),)
    return ConfigProblem(dotted_key(path), _message(error, path, data), line_of(lines, path))


def dotted_key(path: KeyPath) -> str:
    """Write a key path the way TOML does: domains.inventory.interval, channels."my shop".url."""
    parts = []
    for part in path:
        text = str(part)
        parts.append(text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else f'"{text}"')
    return ".".join(parts)


def _key_path(loc: tuple, data: Any) -> KeyPath:
    """Turn a pydantic error location into the TOML key path, dropping union tags."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if part == "[key]":
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif last or not isinstance(part, str) or not isinstance(node, dict):
            path.append(part)
            node = None
        # else: a union tag such as "bearer" that pydantic puts in the location; skip it
    return tuple(path)


def _message(error: dict, path: KeyPath, data: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        return _unknown_key(path, data)
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f'"{ctx.get("tag")}" is not one of {ctx.get("expected_tags")}'
    if kind == "union_tag_not_found":
        return "is required but missing"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{_show(value)} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{_show(value)} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{_show(value)} is not true or false"
    if kind in ("string_type",):
        return f"{_show(value)} is not a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{_show(value)} should be a table"
    if kind == "literal_error":
        return f"{_show(value)} is not one of {error['ctx']['expected']}"
    if kind == "string_pattern_mismatch" and len(path) >= 2 and path[0] == "channels":
        return "is not a channel name: use letters, digits, _ and -"
    if kind.startswith(("greater_than", "less_than")):
        return f"{_show(value)} {error['msg'].lower().replace('input should be', 'should be')}"
    return error["msg"].removeprefix("Value error, ")


def _unknown_key(path: KeyPath, data: Any) -> str:
    node = data
    for part in path[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    name = str(path[-1])
    if len(path) >= 2 and path[0] == "domains" and len(path) == 2:
        return f"is not a domain (domains: {', '.join(DOMAINS)})"
    candidates = _known_keys(path)
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"is not a known key{hint}"


def _known_keys(path: KeyPath) -> list[str]:
    """Keys valid next to the unknown one, for a did-you-mean hint."""
    model: Any = Config
    for part in path[:-1]:
        if model is None:
            return []
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            if part in DOMAINS:
                model = DomainConfig
                continue
            if path and path[0] == "channels" and part == path[1]:
                model = WebhookChannel
                continue
            return []
        model = _model_of(fields[part].annotation)
    fields = getattr(model, "model_fields", None) or {}
    return [name for name in fields if name != "base_dir"]


def _model_of(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)
