"""Waiting-queue policies: first come first served, or by priority."""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

from octavo.request import Request


class RequestQueue(ABC):
    @abstractmethod
    def add(self, request: Request) -> None: ...

    @abstractmethod
    def add_front(self, request: Request) -> None:
        """Return a preempted request; it goes ahead of the requests it arrived before."""

    @abstractmethod
    def peek(self) -> Request: ...

    @abstractmethod
    def pop(self) -> Request: ...

    @abstractmethod
    def remove(self, request: Request) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Request]: ...

    @staticmethod
    @abstractmethod
    def victim(running: list[Request]) -> Request:
        """The running request to preempt when blocks run out."""


class FCFSQueue(RequestQueue):
    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def add(self, request):
        self._queue.append(request)

    def add_front(self, request):
        self._queue.appendleft(request)

    def peek(self):
        return self._queue[0]

    def pop(self):
        return self._queue.popleft()

    def remove(self, request):
        self._queue.remove(request)

    def __len__(self):
        return len(self._queue)

    def __iter__(self):
        return iter(self._queue)

    @staticmethod
    def victim(running):
        return max(running, key=lambda r: r.arrival_time)


class PriorityQueue(RequestQueue):
    """Lowest ``priority`` value first, then earliest arrival."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = itertools.count()

    def add(self, request):
        heapq.heappush(self._heap, (request.priority, request.arrival_time,
                                    next(self._counter), request))

    add_front = add  # its original arrival time already puts it ahead

    def peek(self):
        return self._heap[0][3]

    def pop(self):
        return heapq.heappop(self._heap)[3]

    def remove(self, request):
        self._heap = [item for item in self._heap if item[3] is not request]
        heapq.heapify(self._heap)

    def __len__(self):
        return len(self._heap)

    def __iter__(self):
        return (item[3] for item in sorted(self._heap, key=lambda item: item[:3]))

    @staticmethod
    def victim(running):
        return max(running, key=lambda r: (r.priority, r.arrival_time))
