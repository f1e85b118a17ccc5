"""Tasks held by the client until their dependencies (`after`, `follow`) are met.

The client knows how each of its tasks ended and where it ran, so it decides here, without a
round trip: a task leaves when its `after` is met, for the engines its `follow` allows; it fails
with ImpossibleDependency as soon as either can no longer be met, and with TaskTimeout when its
`timeout` passes first, as IPython Parallel's scheduler does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..error import ImpossibleDependency, InvalidDependency, TaskAborted, TaskTimeout


@dataclass(eq=False)
class HeldTask:
    msg_id: str
    ar: Any
    index: int
    kind: str
    payload: list
    after: Any  # Dependency or None
    follow: Any  # Dependency or None
    among: frozenset | None  # the view's own engines, if it has a subset
    deadline: float | None
    retries: int
    extra: dict = field(default_factory=dict)


class Held:
    """The waiting tasks of one client, indexed by the msg_ids they wait on (used from the I/O thread
    and the submitting threads, under the client's lock)."""

    def __init__(self, client: Any):
        self.client = client
        self.tasks: dict[str, HeldTask] = {}
        self.waiting_on: dict[str, set[str]] = {}  # dependency msg_id -> held msg_ids

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def check_known(self, deps: list[Any]) -> None:
        """A dependency on a task this client never sent can never be decided: say which."""
        known = self.client._known
        for dep in deps:
            if dep is None:
                continue
            unknown = sorted(m for m in dep if not known(m))
            if unknown:
                raise InvalidDependency(f"dependency on unknown task(s) {', '.join(unknown[:5])}"
                                        f"{' ...' if len(unknown) > 5 else ''}: pass msg_ids or AsyncResults "
                                        f"of tasks this client sent")

    def hold(self, task: HeldTask) -> None:
        """Send the task now if its dependencies are met, else keep it until they are."""
        if self._try(task):
            return
        self.tasks[task.msg_id] = task
        for dep in (task.after, task.follow):
            for m in dep or ():
                self.waiting_on.setdefault(m, set()).add(task.msg_id)

    def done(self, msg_id: str) -> None:
        """A task finished: look again at the tasks that wait on it."""
        for held in self.waiting_on.pop(msg_id, ()):
            task = self.tasks.get(held)
            if task is not None and self._try(task):
                self._forget(task)

    def expire(self) -> None:
        now = time.monotonic()
        for task in [t for t in self.tasks.values() if t.deadline is not None and now > t.deadline]:
            self._forget(task)
            self._fail(task, TaskTimeout("the task's dependencies were not met within its timeout"))

    def abort(self, msg_ids: set[str] | None) -> list[str]:
        gone = [t for m, t in self.tasks.items() if msg_ids is None or m in msg_ids]
        for task in gone:
            self._forget(task)
            self._fail(task, TaskAborted("the task was aborted while it waited for its dependencies"))
        return [t.msg_id for t in gone]

    def _forget(self, task: HeldTask) -> None:
        self.tasks.pop(task.msg_id, None)
        for dep in (task.after, task.follow):
            for m in dep or ():
                s = self.waiting_on.get(m)
                if s is not None:
                    s.discard(task.msg_id)
                    if not s:
                        del self.waiting_on[m]

    def _fail(self, task: HeldTask, error: BaseException) -> None:
        self.client._record_done(task.msg_id, None, error)
        task.ar._child_done(task.index, None, error, {})

    def _split(self, dep: Any) -> tuple[set[str], set[str], bool]:
        """(succeeded, failed, all decided) among the dependency's tasks."""
        state = self.client._task_state
        ok, bad, pending = set(), set(), False
        for m in dep:
            s = state(m)
            if s == "ok":
                ok.add(m)
            elif s == "error":
                bad.add(m)
            else:
                pending = True
        return ok, bad, not pending

    def _try(self, task: HeldTask) -> bool:
        """True when the task left (sent, or failed for good)."""
        for name, dep in (("after", task.after), ("follow", task.follow)):
            if not dep:
                continue
            ok, bad, _ = self._split(dep)
            if dep.unreachable(ok, bad):
                self._fail(task, ImpossibleDependency(f"the task's {name!r} dependency can no longer be met"))
                return True
            if not dep.check(ok, bad):
                return False
        among = task.among
        if task.follow:
            where = self._where(task.follow)
            if where is None:
                self._fail(task, ImpossibleDependency("the tasks it follows ran on different engines, and "
                                                      "follow(all=True) asks for one that ran them all"))
                return True
            among = where if among is None else among & where
            if not among:
                self._fail(task, ImpossibleDependency(f"the engines it follows ({sorted(where)}) are not among "
                                                      f"the view's engines"))
                return True
        self.client._send_task(task.kind, task.payload, task.ar, task.index, retries=task.retries,
                               among=among, msg_id=task.msg_id, **task.extra)
        return True

    def _where(self, dep: Any) -> frozenset | None:
        """Engines the task may run on: where all (or any) of the followed tasks ran."""
        engines = [self.client._engine_of(m) for m in dep]
        engines = [e for e in engines if e is not None]
        if dep.all:
            return frozenset(engines) if len(set(engines)) <= 1 else None
        return frozenset(engines)
