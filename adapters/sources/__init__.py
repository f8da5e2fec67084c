"""Source adapters, by `erp.kind`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx

from adapters.sources.rest import RestSource
from connector.config import DomainConfig, ErpConfig


def build_source(
    erp: ErpConfig, domain_cfg: DomainConfig, client: httpx.AsyncClient, env: Mapping[str, str], stop: asyncio.Event
) -> RestSource:
    """The source adapter for the configured ERP kind."""
    kinds = {"rest": RestSource}
    return kinds[erp.kind](erp, domain_cfg, client, env, stop)
