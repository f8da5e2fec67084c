"""Log lines for a terminal or journald: time, level, what it is about, the message."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "info") -> None:
    """Send erpsync's log lines to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger("erpsync")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
