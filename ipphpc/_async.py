"""Run a coroutine to completion from sync code, even where an event loop already runs (a notebook)."""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Coroutine


def run_sync(coro: Coroutine) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
