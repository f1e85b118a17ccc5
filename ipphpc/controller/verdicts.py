"""Why a batch engine went silent, asked of the scheduler before its tasks are failed.

An engine whose heartbeat stops without a word (its node failed, the scheduler killed its job without
the usual SIGTERM) looks the same to the controller as one whose task crashed it; one killed after it
said it got SIGTERM could have been cancelled, preempted or at its walltime. Only the scheduler knows
which it was, and the controller does not talk to schedulers: the process holding the cluster
does (its *witness*, see ipphpc.cluster.witness). While a witness listens, the tasks such an engine
held are parked for up to `c.Controller.verdict_wait` seconds and the witness is told at once; it reads
the element's end from the scheduler and answers:

* the scheduler ended it (node failure, walltime, preemption, a cancel): the load-balanced task it was
  running goes back to the queue without using a retry, and its direct tasks fail with an EngineError
  giving the scheduler's reason;
* anything else (the element still runs, or failed by itself): the tasks fail as they would have,
  with the scheduler's word added;
* no answer in time: they fail as they would have.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: a witness that has not asked for news for this long is taken for gone (it asks every few seconds)
WITNESS_SILENCE = 30.0


@dataclass
class Parked:
    """Tasks of one lost engine waiting for the scheduler's word."""

    eid: int
    info: dict
    why: str
    who: str
    deadline: float
    # (msg_id, client, the load-balanced task if it was the one running (else None), whether it was running)
    tasks: list[tuple[str, bytes, Any, bool]] = field(default_factory=list)
    told: bool = False  # the witness has been told about it


class Verdicts:
    """Parked tasks of silent batch engines, and the witness's long poll (`watch_engines`)."""

    def __init__(self, hub: Any, wait: float):
        self.hub, self.wait = hub, wait
        self.parked: dict[int, Parked] = {}
        self.poll: tuple[bytes, str, float] | None = None  # the witness's open request: ident, id, answer by
        self.witness_seen = float("-inf")

    def listening(self) -> bool:
        return self.wait > 0 and time.monotonic() - self.witness_seen < WITNESS_SILENCE

    def park(self, e: Any, why: str, who: str, tasks: list[tuple[str, bytes, Any, bool]]) -> None:
        self.parked[e.eid] = Parked(e.eid, dict(e.info), why, who, time.monotonic() + self.wait, tasks)
        self.hub.log.info("engine %d went silent with %d task(s); asking the scheduler why (up to %g s)", e.eid,
                          len(tasks), self.wait)
        self._answer_poll()

    def on_watch(self, ident: bytes, h: dict) -> None:
        """The witness asks for lost engines it was not told of; answered now, or once one is lost, or at
        the end of its `wait`."""
        self.witness_seen = time.monotonic()
        if self.poll is not None:  # a newer poll replaces the old one, which gets an empty answer
            self._reply(*self.poll[:2], [])
        self.poll = (ident, h["id"], time.monotonic() + max(0.0, min(float(h.get("wait", 0)), WITNESS_SILENCE / 2)))
        self._answer_poll(final=False)

    def _answer_poll(self, final: bool = False) -> None:
        if self.poll is None:
            return
        news = [p for p in self.parked.values() if not p.told]
        if not news and not final:
            return
        ident, pid, _ = self.poll
        self.poll = None
        for p in news:
            p.told = True
        now = time.monotonic()
        self._reply(ident, pid, [{"eid": p.eid, "job_id": p.info.get("job_id"),
                                  "array_index": p.info.get("array_index"), "host": p.info.get("host"),
                                  "answer_within": max(0.0, p.deadline - now)} for p in news])

    def _reply(self, ident: bytes, pid: str, lost: list) -> None:
        self.hub._send(self.hub.client_sock, ident, "reply", {"p": pid, "lost": lost, "wait": self.wait})

    def on_verdict(self, h: dict) -> dict:
        """The witness's answer: `ended` (the scheduler's reason when the scheduler ended the element, else
        empty) and `says` (its word on the element)."""
        p = self.parked.pop(int(h["eid"]), None)
        if p is None:
            return {"known": False}
        ended, says = str(h.get("ended") or ""), str(h.get("says") or "")
        if ended:
            self._settle(p, f"{ended} (the scheduler says {says})" if says else ended, requeue=True)
        else:
            self._settle(p, f"{p.why}; the scheduler says its element {says}" if says else p.why, requeue=False)
        return {"known": True}

    def sweep(self) -> None:
        """Parked tasks past their wait fail; an open poll past its time is answered."""
        now = time.monotonic()
        for p in [p for p in self.parked.values() if now >= p.deadline]:
            del self.parked[p.eid]
            self._settle(p, f"{p.why} (the scheduler gave no reason within {self.wait:g} s)", requeue=False)
        if self.poll is not None and now >= self.poll[2]:
            self._answer_poll(final=True)

    def _settle(self, p: Parked, why: str, requeue: bool) -> None:
        hub = self.hub
        back = []
        for msg_id, client, task, ran in p.tasks:
            if requeue and task is not None:  # the scheduler's doing, not the task's: it runs again
                back.append(task)
            else:
                hub._fail(client, msg_id, "EngineError", f"{p.who} was lost "
                          f"{'while running' if ran else 'before it started'} this task: {why}", p.eid)
        hub.log.info("engine %d: %s; %d task(s) queued again, %d failed", p.eid, why, len(back),
                     len(p.tasks) - len(back))
        if back:
            hub._requeue(back)
