"""Turn a cluster's engines into a dask.distributed cluster, and back.

The dask Scheduler runs in the client's process, on an event loop thread of its own; each chosen
engine starts a dask Worker on a background thread with its own event loop (the engine's main
thread keeps running ipphpc tasks), so dask work runs in the engine processes themselves.

This module is also imported on engines (the worker functions live here): `distributed` is
imported only when used.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Coroutine

from .remote import EngineNamespace

#: seconds for the scheduler to start, each worker to connect to it, and each to close
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError("become_dask needs dask.distributed, which is not installed here: "
                          "pip install distributed (on the engines too)") from None
    return distributed


class _LoopThread:
    """An asyncio event loop running forever on a daemon thread; coroutines are run on it from outside."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, coro: Coroutine, timeout: float, what: str) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{what} took longer than {timeout:g} s") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


# -- on the engines ----------------------------------------------------------------------------

@dataclass
class _EngineWorker:
    worker: Any
    runner: _LoopThread
    scheduler: str


_engine_worker: _EngineWorker | None = None  # this engine's dask worker, when it has one


def _start_worker(ns: dict, scheduler: str, nanny: bool, timeout: float, kwargs: dict) -> dict:
    """Runs on an engine: start a dask Worker (or Nanny) connected to `scheduler`, unless one is."""
    global _engine_worker
    if _engine_worker is not None:
        if _engine_worker.scheduler != scheduler:
            raise RuntimeError(f"this engine already runs a dask worker of the scheduler at "
                               f"{_engine_worker.scheduler}; stop it first with stop_dask")
        return {"address": _engine_worker.worker.address, "pid": os.getpid(), "started": False}
    distributed = _import_distributed()
    cls = distributed.Nanny if nanny else distributed.Worker

    async def start() -> Any:
        return await cls(scheduler, **kwargs)

    runner = _LoopThread("ipphpc-dask-worker")
    try:
        worker = runner.call(start(), timeout, f"connecting a dask worker to the scheduler at {scheduler}")
    except BaseException:
        runner.stop()
        raise
    _engine_worker = _EngineWorker(worker, runner, scheduler)
    ns["dask_worker"] = ns["distributed_worker"] = worker
    return {"address": worker.address, "pid": os.getpid(), "started": True}


def _stop_worker(ns: dict, timeout: float) -> bool:
    """Runs on an engine: close its dask worker and the worker's event loop thread (False: none ran)."""
    global _engine_worker
    running, _engine_worker = _engine_worker, None
    if running is None:
        return False
    for name in ("dask_worker", "distributed_worker"):
        if ns.get(name) is running.worker:
            del ns[name]
    try:
        running.runner.call(running.worker.close(), timeout, "closing the dask worker")
    finally:
        running.runner.stop(timeout)
    return True


# -- in the client -----------------------------------------------------------------------------

@dataclass
class _Dask:
    scheduler: Any
    runner: _LoopThread
    client: Any = None  # the distributed.Client handed out
    engines: set[int] = field(default_factory=set)  # engines running a worker of this scheduler


_running: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ipphpc Client -> _Dask


def _start_scheduler(port: int, scheduler_args: dict) -> _Dask:
    distributed = _import_distributed()

    async def start() -> Any:
        return await distributed.Scheduler(port=port, **scheduler_args)

    runner = _LoopThread("ipphpc-dask-scheduler")
    try:
        scheduler = runner.call(start(), START_TIMEOUT, "starting the dask scheduler")
    except BaseException:
        runner.stop()
        raise
    return _Dask(scheduler, runner)


def become_dask(client: Any, targets: Any = "all", port: int = 0, nanny: bool = False,
                scheduler_args: dict | None = None, **worker_args: Any) -> Any:
    """Start a dask Scheduler here and a dask Worker in each of the `targets` engines.

    `port`: the scheduler's (0: any free one); `scheduler_args` go to `distributed.Scheduler`
    (host=, interface= where engines must reach this machine by a given address); `worker_args`
    to `distributed.Worker` (nthreads defaults to 1 and name to the engine id). `nanny=True` runs
    each worker in a child process of its engine instead. Returns a `distributed.Client` of the
    scheduler; `stop_dask` undoes it all.
    """
    distributed = _import_distributed()
    if "ncores" in worker_args:  # distributed's former name for nthreads, still in older notebooks
        worker_args["nthreads"] = worker_args.pop("ncores")
    ids = client._resolve(targets)
    state = _running.get(client)
    fresh = state is None
    if fresh:
        state = _start_scheduler(port, dict(scheduler_args or {}))
        _running[client] = state
    address = state.scheduler.address
    started: list[int] = []
    try:
        pending = {}
        for eid in ids:
            kwargs = {"nthreads": 1, "name": eid, **worker_args}
            pending[eid] = client.direct_view(eid).apply_async(
                _start_worker, EngineNamespace(), address, nanny, START_TIMEOUT, kwargs)
        for eid, ar in pending.items():
            info = ar.get(START_TIMEOUT + 10)
            if info["started"]:
                started.append(eid)
            state.engines.add(eid)
    except BaseException:
        _stop_engines(client, started)
        state.engines.difference_update(started)
        if fresh:
            _stop_scheduler(client)
        raise
    if state.client is None or state.client.status in ("closed", "closing"):
        state.client = distributed.Client(address, timeout=START_TIMEOUT)
    return state.client


def _stop_engines(client: Any, ids: list[int]) -> None:
    if ids:
        client.direct_view(ids).apply_async(_stop_worker, EngineNamespace(), STOP_TIMEOUT).get(STOP_TIMEOUT + 10)


def _stop_scheduler(client: Any) -> None:
    state = _running.pop(client, None)
    if state is None:
        return
    try:
        if state.client is not None:
            state.client.close(timeout=STOP_TIMEOUT)
        state.runner.call(state.scheduler.close(), STOP_TIMEOUT, "closing the dask scheduler")
    finally:
        state.runner.stop()


def stop_dask(client: Any, targets: Any = "all") -> None:
    """Stop the dask workers of `targets` that become_dask started; with the last of them, the
    scheduler and its distributed.Client. The engines go on serving ipphpc tasks."""
    state = _running.get(client)
    if state is None:
        return
    chosen = sorted(state.engines) if targets == "all" else \
        [eid for eid in client._resolve(targets) if eid in state.engines]
    try:
        _stop_engines(client, [eid for eid in chosen if eid in client.ids])  # a dead engine's worker died with it
    finally:
        state.engines.difference_update(chosen)
        if not state.engines:
            _stop_scheduler(client)


__all__ = ["become_dask", "stop_dask"]
