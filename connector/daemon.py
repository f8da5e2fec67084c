"""The daemon: own the state database, start a loop per domain and per channel, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping

from adapters.channels import build_channel
from adapters.sources import build_source
from connector.config import Config
from connector.erp_budget import ErpBudget, erp_client
from connector.poller import run_domain
from connector.pusher import Pusher
from connector.throttle import Stopping, sleep_or_stop
from state import lock, polls
from state.db import open_state

log = logging.getLogger("erpsync.daemon")

EX_SOFTWARE = 70
HOUSEKEEPING_EVERY = 3600.0


async def run_daemon(config: Config, env: Mapping[str, str] | None = None, stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set (or SIGINT/SIGTERM); returns the process exit status."""
    env = os.environ if env is None else env
    stop = stop or asyncio.Event()
    state_path = config.state_path()
    owner = lock.acquire(state_path)  # StateLocked propagates: the caller explains it
    try:
        db = open_state(state_path)
    except BaseException:
        owner.release()
        raise
    polls.close_abandoned_polls(db)
    polls.prune_runs(db)
    if config.daemon.metrics_listen:
        log.warning("daemon.metrics_listen is accepted but /metrics is not served yet by this version")

    budget = ErpBudget(config.erp.max_requests_per_second, config.erp.max_concurrency, stop)
    clients = {domain: erp_client(config.erp, budget, domain) for domain, _ in config.domains.items()}
    pushers = {
        name: Pusher(db, name, cfg, build_channel(name, cfg, env), stop) for name, cfg in config.channels.items()
    }

    def wake_channels(domain: str):
        def wake() -> None:
            for name in config.channels_for(domain):
                pushers[name].wake.set()
        return wake

    tasks: dict[asyncio.Task, str] = {}
    for domain, domain_cfg in config.domains.items():
        source = build_source(config.erp, domain_cfg, clients[domain], env, stop)
        coro = run_domain(db, domain, domain_cfg, source, config.channels_for(domain), stop, wake_channels(domain))
        tasks[asyncio.create_task(coro, name=f"poll:{domain}")] = f"domain {domain}"
    for name, pusher in pushers.items():
        tasks[asyncio.create_task(pusher.run(), name=f"push:{name}")] = f"channel {name}"
    tasks[asyncio.create_task(_housekeeping(db, stop), name="housekeeping")] = "housekeeping"

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run it in-process)
            pass
    log.info("erpsync running: %d domain(s), %d channel(s), state %s",
             len(clients), len(pushers), state_path)

    status = 0
    stopper = asyncio.create_task(stop.wait())
    pending = set(tasks)
    while pending and not stop.is_set():
        done, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stopper)
        for task in done - {stopper}:
            if task.cancelled() or task.exception() is None:
                continue
            log.critical("the %s loop crashed: %r; stopping so the service manager restarts erpsync",
                         tasks[task], task.exception(), exc_info=task.exception())
            status = EX_SOFTWARE
            stop.set()
    stopper.cancel()

    log.info("stopping: finishing the current page or batch (at most %s)", config.daemon.shutdown_timeout)
    if pending:
        _, late = await asyncio.wait(pending, timeout=config.daemon.shutdown_timeout.total_seconds())
        for task in late:
            task.cancel()
        if late:
            log.warning("cancelled %s after daemon.shutdown_timeout; their work is re-read on restart",
                        ", ".join(sorted(tasks[t] for t in late)))
            await asyncio.gather(*late, return_exceptions=True)
    for client in clients.values():
        await client.aclose()
    for pusher in pushers.values():
        await pusher.adapter.aclose()
    db.conn.close()
    owner.release()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.remove_signal_handler(signum)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("stopped")
    return status


async def _housekeeping(db, stop: asyncio.Event) -> None:
    """Forget old run records now and then."""
    try:
        while True:
            await sleep_or_stop(HOUSEKEEPING_EVERY, stop)
            polls.prune_runs(db)
    except Stopping:
        return
