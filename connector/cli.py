"""The `erpsync` command: run, check, status, demo."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from connector.config import EX_CONFIG, Config, ConfigError, load_config
from connector.durations import format_duration

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Keep storefronts truthful about what the ERP knows: poll, diff, push only real changes.",
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the TOML configuration file")]


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(problem.located(exc.file), markup=False, highlight=False)
        count = len(exc.problems)
        err.print(f"{count} problem{'s' if count != 1 else ''} in {exc.file}; nothing was started", style="red")
        raise typer.Exit(EX_CONFIG) from None


@app.command()
def check(config: ConfigOption) -> None:
    """Validate a configuration: every problem with its line and key, or what it would run."""
    cfg = _load(config)
    domains = Table(title=f"domains (endpoints on {cfg.erp.base_url})", title_justify="left")
    for column in ("domain", "every", "lookback", "resync", "endpoint", "paging", "channels"):
        domains.add_column(column, overflow="fold", no_wrap=column != "channels")
    for name, d in cfg.domains.items():
        domains.add_row(
            name, format_duration(d.interval), format_duration(d.lookback),
            format_duration(d.full_resync) if d.full_resync else "-",
            d.request.path, d.request.pagination.style,
            ", ".join(cfg.channels_for(name)) or "(none: polled, not pushed)",
        )
    channels = Table(title="channels", title_justify="left")
    for column in ("channel", "kind", "domains", "rate", "burst", "batch", "target"):
        channels.add_column(column, overflow="fold", no_wrap=column not in ("domains", "target"))
    for name, c in cfg.channels.items():
        channels.add_row(name, c.kind, ", ".join(c.domains), f"{c.max_requests_per_second:g}/s", str(c.burst),
                         str(c.batch_size), c.url)
    out.print(domains)
    out.print(channels)
    out.print(f"ERP {cfg.erp.base_url}, budget {cfg.erp.max_requests_per_second:g} requests/s, {cfg.erp.max_concurrency} at once; "
              f"state database {cfg.state_path()}")
    out.print("configuration OK", style="green")


@app.command()
def run(config: ConfigOption) -> None:
    """Run the daemon until SIGINT or SIGTERM."""
    from connector.daemon import run_daemon
    from connector.logs import setup_logging
    from state.db import EX_DATAERR, StateError
    from state.lock import EX_TEMPFAIL, StateLocked

    cfg = _load(config)
    setup_logging(cfg.daemon.log_level)
    try:
        status = asyncio.run(run_daemon(cfg))
    except StateLocked as exc:
        err.print(f"erpsync: {exc}", markup=False, highlight=False)
        raise typer.Exit(EX_TEMPFAIL) from None
    except StateError as exc:
        err.print(f"erpsync: {exc.reason}: {exc}", markup=False, highlight=False)
        raise typer.Exit(EX_DATAERR) from None
    raise typer.Exit(status)


@app.command()
def status(config: ConfigOption) -> None:
    """Show what the daemon has done, read from its state database (safe while it runs)."""
    from connector.status import status_tables
    from state.db import EX_DATAERR, StateError, open_state_readonly

    cfg = _load(config)
    try:
        db = open_state_readonly(cfg.state_path())
        out.print(status_tables(db, cfg))
    except StateError as exc:
        err.print(f"erpsync: {exc.reason}: {exc}", markup=False, highlight=False)
        raise typer.Exit(EX_DATAERR) from None


@app.command()
def demo(
    duration: Annotated[Optional[float], typer.Option(help="seconds to run, then verify and exit")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="show the live progress view")] = True,
    products: Annotated[int, typer.Option(help="products in the simulated ERP")] = 300,
) -> None:
    """Run a simulated ERP and storefront with the daemon between them, then check they agree."""
    from connector.demo import run_demo

    raise typer.Exit(run_demo(duration=duration, live=live, products=products, console=out))


def main() -> None:
    """Console-script entry point."""
    app()
