"""Channel adapters, by `channels.<name>.kind`."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from adapters.channels.webhook import WebhookChannel


def build_channel(name: str, cfg, env: Mapping[str, str]):
    """The channel adapter for a configured channel, with its own HTTP client."""
    kinds = {"webhook": WebhookChannel}
    client = httpx.AsyncClient(timeout=cfg.timeout.total_seconds(), headers={"User-Agent": "erpsync"})
    return kinds[cfg.kind](name, cfg, client, env)
