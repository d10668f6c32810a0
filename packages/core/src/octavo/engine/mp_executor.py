"""``mp``: one worker process per rank on this machine (multiprocessing, spawned).

Calls travel as pickles over one ``multiprocessing`` pipe per worker, written once per step
for all ranks; the driver waits on the pipes and on the processes' sentinels together, so a
worker that dies is noticed at once, wherever the others are stuck. A worker exits when its
pipe closes, so none outlives a driver that was killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import socket
import traceback
import weakref
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import torch

from octavo.engine.distributed_executor import DistributedExecutor, WorkerFailure

if TYPE_CHECKING:
    from octavo.engine.builder import EngineConfig

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # a worker that has not exited after SIGTERM by then is killed


class MultiprocExecutor(DistributedExecutor):
    """Ranks in spawned processes, joined over gloo (CPU) or NCCL (CUDA) on a loopback port."""

    def _start_workers(self, config: EngineConfig) -> None:
        context = multiprocessing.get_context("spawn")
        init_method = f"tcp://127.0.0.1:{free_port()}"
        threads = max(1, torch.get_num_threads() // self.world_size)  # split the cores
        self._processes, self._pipes = [], []
        self._finalizer = weakref.finalize(self, stop_processes, self._processes, self._pipes)
        for rank in range(self.world_size):
            parent, child = context.Pipe()
            process = context.Process(
                target=run_worker, name=f"octavo-tp-rank-{rank}", daemon=True,
                args=(child, config, rank, self.world_size, init_method, threads))
            process.start()
            child.close()
            self._processes.append(process)
            self._pipes.append(parent)

    def _call(self, method: str, args: tuple) -> list[Any]:
        message = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, pipe in enumerate(self._pipes):
            try:
                pipe.send_bytes(message)
            except OSError as exc:
                raise WorkerFailure(self._describe_death(rank, exc)) from exc
        results: dict[int, Any] = {}
        sentinels = {p.sentinel: rank for rank, p in enumerate(self._processes)}
        while len(results) < self.world_size:
            pending = {pipe: rank for rank, pipe in enumerate(self._pipes)
                       if rank not in results}
            for ready in wait([*pending, *sentinels]):
                if ready in pending:
                    results[pending[ready]] = self._receive(pending[ready])
                else:  # the process ended, mid-call
                    raise WorkerFailure(self._describe_death(sentinels[ready]))
        return [results[rank] for rank in range(self.world_size)]

    def _receive(self, rank: int) -> Any:
        try:
            ok, value = pickle.loads(self._pipes[rank].recv_bytes())
        except (EOFError, OSError) as exc:
            raise WorkerFailure(self._describe_death(rank, exc)) from exc
        if not ok:
            raise WorkerFailure(f"tensor-parallel rank {rank} failed:\n{value}")
        return value

    def _describe_death(self, rank: int, cause: Exception | None = None) -> str:
        process = self._processes[rank]
        process.join(0.5)
        code = process.exitcode
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with status {code}" if code is not None else f"is gone ({cause})")
        return f"tensor-parallel rank {rank} (pid {process.pid}) {how}"

    def _check_workers(self) -> None:
        for rank, process in enumerate(self._processes):
            if not process.is_alive():
                raise WorkerFailure(self._describe_death(rank))

    def _stop_workers(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()


def stop_processes(processes: list, pipes: list[Connection]) -> None:
    """Close the pipes (a worker exits on EOF), then SIGTERM and at last SIGKILL the rest."""
    for pipe in pipes:
        pipe.close()
    for process in processes:
        process.join(0.2)
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


def free_port() -> int:
    """A TCP port free on the loopback interface now (for the process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker(pipe: Connection, config: EngineConfig, rank: int, world_size: int,
               init_method: str, num_threads: int) -> None:
    """A worker process: serve the driver's calls until its pipe closes."""
    from octavo.engine.worker import Worker

    worker = Worker(config, rank, world_size, init_method, num_threads)
    while True:
        try:
            method, args = pickle.loads(pipe.recv_bytes())
        except (EOFError, OSError):
            break  # the driver is gone, or shut us down
        try:
            reply = (True, getattr(worker, method)(*args))
        except BaseException:  # noqa: BLE001 - the driver reports it and stops every rank
            reply = (False, traceback.format_exc())
        try:
            pipe.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            break
    # Leave without gloo's teardown: a peer that closed its sockets first can make gloo abort
    # the process (tests/models/test_tensor_parallel.py saw it).
    os._exit(0)
