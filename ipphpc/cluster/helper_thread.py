"""The thread shared by a cluster's helpers (Replacer, Adaptive, Witness): started with the helper unless
its owner calls `look()` itself (the keeper of a submitted cluster), ended by `stop()`."""
from __future__ import annotations

import threading


class HelperThread:
    """Mixed into a helper that defines `_main`; `_start_thread` is called at the end of its __init__."""

    _stop: threading.Event
    thread: threading.Thread

    def _start_thread(self, name: str, background: bool) -> None:
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)  # type: ignore[attr-defined]
        if background:
            self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop looking; wait up to `timeout` for a look under way to end."""
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
