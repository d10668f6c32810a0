"""``ray``: one Ray actor per rank, placed by a placement group (one bundle per rank), so the
ranks may live on several machines of a Ray cluster.

The process group meets at rank 0's node IP on a port free there. Calls are actor method
calls; the driver waits with ``ray.wait``, so an actor that dies (its node lost, its process
killed) ends the call with ``RayActorError`` at once instead of a hang. Ray is optional:
``pip install 'octavo-core[ray]'``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from octavo.engine.distributed_executor import DistributedExecutor, WorkerFailure

if TYPE_CHECKING:
    from octavo.engine.builder import EngineConfig

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60.0  # the cluster must offer every bundle within this
HEALTH_TIMEOUT_S = 10.0


def import_ray():
    """The ``ray`` module, or a one-line ValueError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("distributed_executor_backend 'ray' needs Ray: "
                         "pip install 'octavo-core[ray]'") from None
    return ray


class RayWorker:
    """The actor around one rank's ``Worker`` (made a Ray actor class when the executor
    starts, so importing this module needs no Ray)."""

    def __init__(self) -> None:
        self.worker = None

    def rendezvous_address(self) -> str:
        """``host:port`` on this actor's node where rank 0 can host the process group."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((host, 0))
            return f"{host}:{sock.getsockname()[1]}"

    def setup(self, config: EngineConfig, rank: int, world_size: int, init_method: str) -> None:
        import ray

        from octavo.engine.worker import Worker

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.worker = Worker(config, rank, world_size, init_method, max(1, int(cpus)))

    def call(self, method: str, args: tuple) -> Any:
        return getattr(self.worker, method)(*args)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(DistributedExecutor):
    """Ranks as Ray actors in a placement group (``ray_placement_strategy``, PACK by default)."""

    def _start_workers(self, config: EngineConfig) -> None:
        ray = import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray, self._actors, self._group = ray, [], None
        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS, a cluster that `ray start` runs here, or a local one
        gpu = self._uses_gpu(config)
        bundle = {"GPU": 1.0, "CPU": 1.0} if gpu else {"CPU": 1.0}
        strategy = config.parallel.ray_placement_strategy
        self._group = placement_group([bundle] * self.world_size, strategy=strategy)
        ready, _ = ray.wait([self._group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise ValueError(
                f"the Ray cluster cannot place {self.world_size} bundles of {bundle} "
                f"({strategy}) within {PLACEMENT_TIMEOUT_S:.0f} s; it has "
                f"{ray.available_resources()} free")
        actor_class = ray.remote(RayWorker)
        for rank in range(self.world_size):
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=self._group, placement_group_bundle_index=rank)
            self._actors.append(actor_class.options(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=strategy).remote())
        try:
            address = ray.get(self._actors[0].rendezvous_address.remote())
            ray.get([actor.setup.remote(config, rank, self.world_size, f"tcp://{address}")
                     for rank, actor in enumerate(self._actors)])
        except ray.exceptions.RayError as exc:
            raise WorkerFailure(f"a Ray worker failed to start: {exc}") from exc

    def _uses_gpu(self, config: EngineConfig) -> bool:
        device = config.model.device
        if device == "auto":
            return self._ray.cluster_resources().get("GPU", 0) >= self.world_size
        return device == "cuda"

    def _call(self, method: str, args: tuple) -> list[Any]:
        ray = self._ray
        shared = ray.put(args)  # serialized once for every rank
        refs = [actor.call.remote(method, shared) for actor in self._actors]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            self._get(done[0], refs.index(done[0]))
        return ray.get(refs)

    def _get(self, ref, rank: int, timeout: float | None = None) -> Any:
        ray = self._ray
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            raise WorkerFailure(f"tensor-parallel rank {rank} (Ray actor) died: "
                                f"{str(exc).splitlines()[0]}") from exc
        except ray.exceptions.GetTimeoutError as exc:
            raise WorkerFailure(f"tensor-parallel rank {rank} (Ray actor) did not answer "
                                f"within {timeout:.0f} s") from exc
        except ray.exceptions.RayTaskError as exc:
            raise WorkerFailure(f"tensor-parallel rank {rank} failed:\n{exc}") from exc

    def node_ids(self) -> list[str]:
        """The Ray node of each rank, in rank order."""
        return self._ray.get([actor.node_id.remote() for actor in self._actors])

    def _check_workers(self) -> None:
        for rank, actor in enumerate(self._actors):
            self._get(actor.pid.remote(), rank, HEALTH_TIMEOUT_S)

    def _stop_workers(self) -> None:
        ray = getattr(self, "_ray", None)
        if ray is None:
            return
        from ray.util.placement_group import remove_placement_group

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None
