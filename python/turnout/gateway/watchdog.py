"""Deadlines for blocking reads: one thread shuts a socket down when its alarm is due.

httpx bounds each blocking read by one timeout fixed when the body starts, so it cannot say "the
first token within 2 s, then the whole answer within 10 min", nor stop a reply dribbled a byte at a
time. The blocking driver arms an alarm instead; when it fires, the socket is shut down, the read
in progress returns, and the driver sees ``alarm.fired``. One thread serves every alarm.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time


class Alarm:
    """One armed deadline: ``cancel()`` it when the read it guards is done."""

    __slots__ = ("_lock", "cancelled", "deadline", "fired", "sock")

    def __init__(self, deadline: float, sock: socket.socket, lock: threading.Condition) -> None:
        self.deadline = deadline
        self.sock = sock
        self.fired = False
        self.cancelled = False
        self._lock = lock

    def cancel(self) -> None:
        # Under the watchdog's lock: once this returns the socket is never shut down by it (the
        # connection may go back to the pool and serve another request).
        with self._lock:
            self.cancelled = True


class Watchdog:
    """The alarms of a process, due in time.monotonic() order."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, sock: socket.socket) -> Alarm:
        """An alarm shutting `sock` down at `deadline` (time.monotonic()) unless cancelled."""
        alarm = Alarm(deadline, sock, self._cv)
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="turnout-watchdog", daemon=True
                )
                self._thread.start()
            # Cancelled alarms wait in the heap until due: drop them when they are most of it.
            if len(self._heap) > 1024 and len(self._heap) > 2 * self._live():
                self._heap = [e for e in self._heap if not e[2].cancelled]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (deadline, next(self._order), alarm))
            if self._heap[0][2] is alarm:
                self._cv.notify()
        return alarm

    def _live(self) -> int:
        return sum(1 for e in self._heap if not e[2].cancelled)

    def _run(self) -> None:
        with self._cv:
            while True:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                _, _, alarm = heapq.heappop(self._heap)
                alarm.fired = True
                with contextlib.suppress(OSError):  # already closed: its read is over
                    alarm.sock.shutdown(socket.SHUT_RDWR)


#: The process's one watchdog.
WATCHDOG = Watchdog()
