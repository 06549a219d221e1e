"""A tiny sans-IO coroutine scheduler: application code as ``async def`` without an event loop.

Theory of operation
-------------------
A task is a coroutine.  It suspends only on the scheduler's own awaitables:

- ``await scheduler.wait_until(predicate, timeout=None, key=None)`` -> True when the predicate
  held, False when ``timeout`` seconds passed first;
- ``await scheduler.sleep(seconds)``;
- ``await task`` (another task's result).

Nothing runs by itself: the owner (``HostStack.poll``) calls :meth:`Scheduler.run_ready` with
the current time.  It first resumes tasks whose deadline has passed, then repeatedly resumes
every task whose predicate holds, until no task can make progress (quiescence).  A deadline
set during a ``run_ready`` call is only honoured by the next call (so ``sleep(0)`` yields to the
loop, as in asyncio); :meth:`next_deadline` reports it so the loop comes back at once.

Predicates are plain callables evaluated by the scheduler.  Unkeyed waits are evaluated on
every pass.  A wait with a ``key`` (for example the TCP connection it depends on) is evaluated
only after :meth:`notify` was called for that key, which keeps idle tasks free when there are
thousands of them: whoever changes the state behind a key must call ``notify(key)`` (the host
stack does for every connection it touches).

A task that raises is logged and finished with the exception stored on the :class:`Task`;
the scheduler and its owner carry on.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["CancelledError", "Scheduler", "Task"]

log = logging.getLogger(__name__)


class CancelledError(Exception):
    """Raised by :meth:`Task.result` for a cancelled task."""


class _Wait:
    """What a task yields to the scheduler: a predicate and/or a delay."""

    __slots__ = ("predicate", "delay", "key", "deadline", "timed_out", "error")

    def __init__(
        self, predicate: Callable[[], bool] | None, delay: float | None, key: object = None
    ) -> None:
        self.predicate = predicate
        self.delay = delay
        self.key = key
        self.deadline: float | None = None
        self.timed_out = False
        self.error: Exception | None = None  # the predicate raised: re-raised in the task

    def __await__(self) -> Generator[_Wait, None, bool]:
        if self.predicate is not None and self.predicate():
            return True  # already true: no trip through the scheduler
        yield self
        if self.error is not None:
            raise self.error
        return not self.timed_out


class Task:
    """A running coroutine.  Awaitable from other tasks."""

    __slots__ = (
        "name",
        "_coro",
        "_wait",
        "_done",
        "_result",
        "_exception",
        "_cancelled",
        "_running",
        "_cancel_requested",
        "_scheduler",
    )

    def __init__(self, scheduler: Scheduler, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self.name = name
        self._scheduler = scheduler
        self._coro = coro
        self._wait: _Wait | None = None
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._cancelled = False
        self._running = False
        self._cancel_requested = False

    def __repr__(self) -> str:
        state = "done" if self._done else ("waiting" if self._wait else "ready")
        return f"<Task {self.name} {state}>"

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> Any:
        if not self._done:
            raise RuntimeError(f"task {self.name} is not done")
        if self._cancelled:
            raise CancelledError(self.name)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self) -> BaseException | None:
        if not self._done:
            raise RuntimeError(f"task {self.name} is not done")
        return self._exception

    def cancel(self) -> bool:
        """Stop the task: its coroutine is closed (``finally`` blocks run).  False if done."""
        if self._done:
            return False
        if self._running:  # cancelling itself: finish when it next suspends
            self._cancel_requested = True
            return True
        self._scheduler._forget_wait(self)
        try:
            self._coro.close()
        except Exception as exc:  # a finally block that raised
            log.warning("task %s raised while being cancelled: %r", self.name, exc)
        self._cancelled = True
        try:
            self._scheduler._runnable.remove(self)
        except ValueError:
            pass
        self._scheduler._finish(self)
        return True

    def __await__(self) -> Generator[_Wait, None, Any]:
        if not self._done:
            yield from _Wait(self.done, None).__await__()
        return self.result()


class Scheduler:
    """Runs :class:`Task` objects when their conditions hold.  See the module docstring."""

    def __init__(self, max_steps: int = 100_000) -> None:
        self.now = 0.0
        self.max_steps = max_steps  # per run_ready call: a livelocked task cannot hang poll()
        self.tasks: set[Task] = set()  # not finished
        self._runnable: deque[Task] = deque()
        self._polling: dict[Task, _Wait] = {}
        self._by_key: dict[int, dict[Task, _Wait]] = {}
        # Insertion-ordered (a dict, not a set of ids) so that runs replay deterministically.
        self._notified: dict[int, None] = {}
        self._timers: list[tuple[float, int, Task, _Wait]] = []
        self._seq = 0
        self._busy = False
        self._counter = 0

    # ---- awaitables -----------------------------------------------------------------------

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float | None = None, key: object = None
    ) -> _Wait:
        """Awaitable: resumes when ``predicate()`` is true (-> True) or after ``timeout`` (-> False).

        With ``key``, the predicate is re-evaluated only after ``notify(key)``.
        """
        return _Wait(predicate, timeout, key)

    def sleep(self, seconds: float) -> _Wait:
        return _Wait(None, max(0.0, seconds))

    # ---- control --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> Task:
        """Start ``coro`` as a task; it first runs at the next :meth:`run_ready`."""
        self._counter += 1
        task = Task(self, coro, name or f"task-{self._counter}")
        self.tasks.add(task)
        self._runnable.append(task)
        return task

    def notify(self, key: object) -> None:
        """The state behind ``key`` changed: re-evaluate the waits registered with it."""
        k = id(key)
        if k in self._by_key:
            self._notified[k] = None

    def run_ready(self, now: float) -> int:
        """Step every task whose condition holds, until quiescent.  Returns the number of steps."""
        self.now = now
        self._busy = False
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, task, w = heapq.heappop(timers)
            if task._wait is w:
                self._wake(task, w, not (w.predicate is not None and self._holds(w)))
        steps = 0
        while True:
            if self._notified:
                keys, self._notified = self._notified, {}
                for k in keys:
                    waiters = self._by_key.get(k)
                    if waiters:
                        for task, w in list(waiters.items()):
                            if self._holds(w):
                                self._wake(task, w, False)
            if self._polling:
                for task, w in list(self._polling.items()):
                    if self._holds(w):
                        self._wake(task, w, False)
            if not self._runnable:
                break
            while self._runnable:
                if steps >= self.max_steps:
                    self._busy = True
                    log.warning("scheduler: %d steps in one run, yielding to the loop", steps)
                    return steps
                self._step(self._runnable.popleft())
                steps += 1
        return steps

    def next_deadline(self) -> float | None:
        if self._runnable or self._notified or self._busy:
            return self.now
        timers = self._timers
        while timers and timers[0][2]._wait is not timers[0][3]:
            heapq.heappop(timers)  # stale entry (the wait ended another way)
        return timers[0][0] if timers else None

    # ---- internals ------------------------------------------------------------------------

    def _step(self, task: Task) -> None:
        task._running = True
        try:
            w = task._coro.send(None)
        except StopIteration as stop:
            task._result = stop.value
            self._finish(task)
            return
        except Exception as exc:
            task._exception = exc
            log.error("task %s failed: %r", task.name, exc, exc_info=exc)
            self._finish(task)
            return
        finally:
            task._running = False
        if task._cancel_requested:
            task._cancel_requested = False
            task.cancel()
            return
        if not isinstance(w, _Wait):
            task._exception = TypeError(
                f"task {task.name} awaited {w!r}; only Scheduler awaitables work here"
            )
            log.error("task %s failed: %s", task.name, task._exception)
            task._coro.close()
            self._finish(task)
            return
        task._wait = w
        if w.delay is not None:
            w.deadline = self.now + w.delay
            self._seq += 1
            heapq.heappush(self._timers, (w.deadline, self._seq, task, w))
        if w.predicate is not None:
            if w.key is None:
                self._polling[task] = w
            else:
                self._by_key.setdefault(id(w.key), {})[task] = w

    @staticmethod
    def _holds(w: _Wait) -> bool:
        """Evaluate a wait's predicate; an exception is delivered to the waiting task."""
        try:
            return bool(w.predicate())  # type: ignore[misc]
        except Exception as exc:
            w.error = exc
            return True

    def _wake(self, task: Task, w: _Wait, timed_out: bool) -> None:
        self._forget_wait(task)
        w.timed_out = timed_out
        self._runnable.append(task)

    def _forget_wait(self, task: Task) -> None:
        w = task._wait
        if w is None:
            return
        task._wait = None
        if w.predicate is not None:
            if w.key is None:
                self._polling.pop(task, None)
            else:
                k = id(w.key)
                waiters = self._by_key.get(k)
                if waiters is not None:
                    waiters.pop(task, None)
                    if not waiters:
                        del self._by_key[k]
        # Timer heap entries are dropped lazily (task._wait is no longer w).

    def _finish(self, task: Task) -> None:
        task._done = True
        self.tasks.discard(task)
