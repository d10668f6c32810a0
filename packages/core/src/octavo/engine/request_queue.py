"""Waiting-queue policies: first come first served, or by priority.

Every operation a scheduler does per request (add, remove, membership) is O(1) or O(log n), so
aborting one request among thousands waiting stays cheap.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict
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
    def remove(self, request: Request) -> None:
        """Take the request out of the queue (it must be in it)."""

    @abstractmethod
    def __contains__(self, request: object) -> bool: ...

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
        self._queue: OrderedDict[str, Request] = OrderedDict()  # req_id -> request, in order

    def add(self, request):
        self._queue[request.req_id] = request

    def add_front(self, request):
        self._queue[request.req_id] = request
        self._queue.move_to_end(request.req_id, last=False)

    def peek(self):
        return next(iter(self._queue.values()))

    def pop(self):
        return self._queue.popitem(last=False)[1]

    def remove(self, request):
        del self._queue[request.req_id]

    def __contains__(self, request):
        return isinstance(request, Request) and self._queue.get(request.req_id) is request

    def __len__(self):
        return len(self._queue)

    def __iter__(self):
        return iter(list(self._queue.values()))

    @staticmethod
    def victim(running):
        return max(running, key=lambda r: r.arrival_time)


_Entry = tuple[int, float, int, Request]  # (priority, arrival, tie-breaker, request)


class PriorityQueue(RequestQueue):
    """Lowest ``priority`` value first, then earliest arrival.

    A heap with lazy deletion: ``remove`` forgets the request's entry, and entries that are
    no longer current are dropped when they reach the top.
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._current: dict[str, _Entry] = {}  # req_id -> its live heap entry
        self._counter = itertools.count()

    def add(self, request):
        entry = (request.priority, request.arrival_time, next(self._counter), request)
        self._current[request.req_id] = entry
        heapq.heappush(self._heap, entry)

    add_front = add  # its original arrival time already puts it ahead

    def _drop_stale(self) -> None:
        while self._heap and self._current.get(self._heap[0][3].req_id) is not self._heap[0]:
            heapq.heappop(self._heap)

    def peek(self):
        self._drop_stale()
        return self._heap[0][3]

    def pop(self):
        self._drop_stale()
        entry = heapq.heappop(self._heap)
        del self._current[entry[3].req_id]
        return entry[3]

    def remove(self, request):
        del self._current[request.req_id]
        if len(self._heap) > 2 * len(self._current) + 64:  # mostly stale: rebuild
            self._heap = list(self._current.values())
            heapq.heapify(self._heap)

    def __contains__(self, request):
        entry = self._current.get(request.req_id) if isinstance(request, Request) else None
        return entry is not None and entry[3] is request

    def __len__(self):
        return len(self._current)

    def __iter__(self):
        return (entry[3] for entry in sorted(self._current.values(), key=lambda e: e[:3]))

    @staticmethod
    def victim(running):
        return max(running, key=lambda r: (r.priority, r.arrival_time))
