"""Engine components: thin subclasses of core's defaults, so they implement the interfaces.

This module is imported only when Octavo first asks the registry for one of these names.
"""

from octavo.engine.scheduler import FCFSScheduler
from octavo.kv_cache.manager import PagedKVCacheManager
from octavo.kv_cache.swapper import HostSwapper


class ExampleScheduler(FCFSScheduler):
    """First come, first served (core's policy), under the example plugin's name."""


class ExampleKVCacheManager(PagedKVCacheManager):
    """Core's paged KV cache manager, under the example plugin's name."""


class ExampleSwapper(HostSwapper):
    """Core's host swapper, under the example plugin's name."""
