"""A joblib backend: `Parallel(backend='ipyparallel')` (or 'ipphpc') runs its batches on engines."""
from __future__ import annotations

import functools
from typing import Any, Callable

try:
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend
except ImportError:
    raise ImportError("the joblib backend needs joblib: pip install joblib") from None

#: registering the backend under this name registers it under ALIAS too
DEFAULT_NAME = "ipyparallel"
ALIAS = "ipphpc"


class IPythonParallelBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs each joblib batch as one task of a view: `view`, or else a load-balanced view of the
    most recently connected client (one is connected to the newest cluster if there is none,
    and closed again when joblib terminates the backend)."""

    supports_retrieve_callback = True

    def __init__(self, view: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._given = view
        self._default: Any = None  # the load-balanced view of the latest client, once used
        self._owned: Any = None  # a client this backend connected, closed at terminate

    @property
    def _view(self) -> Any:
        if self._given is not None:
            return self._given_as_balanced()
        from .client import Client
        latest = Client._latest
        if latest is None or latest._closed:
            if self._owned is None or self._owned._closed:
                self._owned = Client()  # the newest cluster of the default profile
            latest = self._owned
        if self._default is None or self._default.client is not latest:
            self._default = latest.load_balanced_view()
        return self._default

    def _given_as_balanced(self) -> Any:
        """A DirectView of several engines would run each batch on all of them: balance over them instead."""
        from .view import DirectView
        view = self._given
        if not isinstance(view, DirectView) or view._single:
            return view
        if self._default is None:
            self._default = view.client.load_balanced_view(targets=view.targets)
        return self._default

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """As many batches at once as the view has engines (IPython Parallel ignores n_jobs too).

        Never 1: joblib then runs every call in this process, and a one-engine view is meant to
        run them on its engine."""
        view = self._view
        engines = len(view) if hasattr(view, "__len__") else len(view.client.ids)
        return max(2, engines)

    def submit(self, func: Callable, callback: Callable | None = None) -> Any:
        ar = self._view.apply_async(func)
        if callback is not None:
            ar.add_done_callback(callback)
        return ar

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.get()

    def terminate(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = self._default = None


def register(name: str = DEFAULT_NAME, make_default: bool = False, view: Any = None) -> None:
    """Register the backend with joblib under `name` (and 'ipphpc' when `name` is the default);
    with `view`, bound to that view, else to the most recently connected client."""
    factory = IPythonParallelBackend if view is None else functools.partial(IPythonParallelBackend, view=view)
    register_parallel_backend(name, factory, make_default=make_default)
    if name == DEFAULT_NAME:
        register_parallel_backend(ALIAS, factory)


__all__ = ["IPythonParallelBackend", "register"]
