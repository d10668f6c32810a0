"""The swap tier's metrics at /metrics come from the engine's stats at scrape time."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from octavo.engine.stats import EngineStats
from octavo.kv_cache.tier import SwapStats
from octavo_server.metrics import ServerMetrics


@dataclass
class FakeModel:
    name: str
    snapshot: EngineStats

    def stats(self) -> EngineStats:
        return self.snapshot


def test_swap_counters_and_preemptions_by_mode_are_exported():
    swap = SwapStats(num_tier_blocks=100, num_free_tier_blocks=60, blocks_swapped_out=12,
                     blocks_swapped_in=7, bytes_swapped_out=12 * 4096,
                     bytes_swapped_in=7 * 4096, prefix_blocks_offloaded=5, tier_prefix_hits=3)
    stats = EngineStats(num_running=1, num_waiting=2, num_swapped=3, num_kv_blocks=10,
                        num_free_kv_blocks=4, block_size=16, kv_cache_usage=0.6,
                        num_preemptions_swap=4, num_preemptions_recompute=1, swap=swap)
    metrics = ServerMetrics([FakeModel("m", stats)])
    samples = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.labels.get("model_name") == "m":
                key = sample.name + "".join(f"[{v}]" for k, v in sample.labels.items()
                                            if k == "mode")
                samples[key] = sample.value
    assert samples["octavo_num_requests_swapped"] == 3
    assert samples["octavo_kv_tier_blocks"] == 100
    assert samples["octavo_kv_tier_free_blocks"] == 60
    assert samples["octavo_kv_blocks_swapped_out_total"] == 12
    assert samples["octavo_kv_blocks_swapped_in_total"] == 7
    assert samples["octavo_kv_swap_out_bytes_total"] == 12 * 4096
    assert samples["octavo_kv_swap_in_bytes_total"] == 7 * 4096
    assert samples["octavo_kv_tier_prefix_blocks_offloaded_total"] == 5
    assert samples["octavo_kv_tier_prefix_hits_total"] == 3
    assert samples["octavo_preemptions_by_mode_total[swap]"] == 4
    assert samples["octavo_preemptions_by_mode_total[recompute]"] == 1
