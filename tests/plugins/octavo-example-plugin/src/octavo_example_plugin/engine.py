"""Engine components.

The scheduler is written the way a third party writes one: against core's ``Scheduler``
interface only, not by subclassing core's implementation (it delegates the policy to core's
FCFS scheduler, and adds nothing, so tests can compare it with the built-in one). The KV cache
manager and swapper are thin subclasses of core's defaults.

This module is imported only when Octavo first asks the registry for one of these names.
"""

from octavo.engine.scheduler import FCFSScheduler, RequestCounts, Scheduler
from octavo.kv_cache.manager import PagedKVCacheManager
from octavo.kv_cache.swapper import HostSwapper


class ExampleScheduler(Scheduler):
    """First come, first served, behind the interface alone."""

    def __init__(self, kv_cache, **limits) -> None:
        super().__init__(kv_cache, **limits)
        self._policy = FCFSScheduler(kv_cache, **limits)

    def add_request(self, request):
        self._policy.add_request(request)

    def abort_requests(self, req_ids):
        return self._policy.abort_requests(req_ids)

    def schedule(self):
        return self._policy.schedule()

    def update(self, scheduled, result):
        return self._policy.update(scheduled, result)

    def has_unfinished_requests(self):
        return self._policy.has_unfinished_requests()

    def request_counts(self) -> RequestCounts:
        counts = self._policy.request_counts()
        return RequestCounts(running=counts.running, waiting=counts.waiting,
                             swapped=counts.swapped)


class ExampleKVCacheManager(PagedKVCacheManager):
    """Core's paged KV cache manager, under the example plugin's name."""


class ExampleSwapper(HostSwapper):
    """Core's host swapper, under the example plugin's name."""
