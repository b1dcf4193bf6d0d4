"""Who runs a sweep's jobs: this process (``local``), a pool of local processes (``local`` with workers > 1)
or Ray tasks (``ray``, on a local Ray started on demand or a cluster at an address). Every backend yields
results as jobs finish; the caller (the driver) is the only writer of the store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ittrna.errors import InputError

__all__ = ["BACKENDS", "Backend", "LocalBackend", "RayBackend", "make_backend"]

BACKENDS = ("local", "ray")


class Backend:
    """Runs ``fn(*args)`` for each job; :meth:`run` yields ``(index, result)`` as jobs finish."""

    name = "backend"
    workers = 1

    def share(self, obj: Any) -> Any:
        """A handle to pass ``obj`` (e.g. a model) to many jobs cheaply."""
        return obj

    def run(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the backend's resources."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_WORKER_THREADS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Thread pools a worker process must start with one thread each: numpy's and scipy's OpenBLAS (the exact
IR-drop solve's SuperLU calls it) read these when they load, before any initializer runs. With their default
of one thread per core, two workers on two cores ran the exact solve 2.5-3x slower than one thread each."""


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Processes spawned inside inherit one-thread settings for every BLAS/OpenMP pool; this process's own
    environment is restored on exit (its libraries, already loaded, are unaffected)."""
    saved = {k: os.environ.get(k) for k in _WORKER_THREADS_ENV}
    os.environ.update({k: "1" for k in _WORKER_THREADS_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LocalBackend(Backend):
    """Jobs in this process, one after the other (``workers = 1``), or in a pool of ``workers`` processes."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._pool: Any = None

    def run(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        if self.workers <= 1 or len(jobs) <= 1:
            import torch

            before = torch.get_num_threads()
            try:
                for i, args in enumerate(jobs):
                    yield i, fn(*args)
            finally:
                torch.set_num_threads(before)
            return
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(1,))
        with _single_threaded_children():  # a spawn pool starts its workers in submit
            futures = {self._pool.submit(fn, *args): i for i, args in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayBackend(Backend):
    """Jobs as Ray tasks (1 CPU each, torch limited to 1 thread): on a local Ray with ``workers`` CPUs started
    here (and stopped at :meth:`close`), or on the running cluster at ``address`` (``auto`` finds a local
    one). The cluster's nodes need ittrna installed and the datasets reachable (fetched on first use)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise InputError("--backend ray needs Ray: pip install 'ittrna[ray]'") from None
        self._ray = ray
        self._started = False
        env = {**{k: "1" for k in _WORKER_THREADS_ENV}, "PYTHONWARNINGS": "ignore"}
        if "ITTRNA_DATA" in os.environ:
            env["ITTRNA_DATA"] = os.environ["ITTRNA_DATA"]
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": "ERROR",
                                      "log_to_driver": False, "include_dashboard": False}
            if address:
                _check_reachable(address)  # ray.init retries an unreachable address for minutes
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = f"at {address}" if address else "locally"
                raise InputError(f"cannot start Ray {where}: {' '.join(str(exc).split())[:200]}") from None
            self._started = True
        total = int(ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers, total) if workers else total
        self._remote: dict[Callable[..., Any], Any] = {}

    def share(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def run(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
        remote = self._remote[fn]
        todo = list(enumerate(jobs))[::-1]
        running: dict[Any, int] = {}
        try:
            while todo or running:
                while todo and len(running) < 2 * self.workers:  # a little queue keeps every CPU busy
                    i, args = todo.pop()
                    running[remote.remote(*args)] = i
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    i = running.pop(ref)
                    try:
                        yield i, ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, BaseException):
                            raise cause from None
                        raise
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) Ray address that accepts no connection within
    ``timeout`` seconds; ``auto`` and other forms are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise InputError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); accepted "
                         "the address of a running cluster (ray start --head), or no --address") from None


def make_backend(name: str, workers: int | None = None, address: str | None = None) -> Backend:
    """A backend by name (``local`` or ``ray``)."""
    if name == "local":
        if address:
            raise InputError("--address is for --backend ray")
        return LocalBackend(workers or 1)
    if name == "ray":
        return RayBackend(workers, address)
    raise InputError(f"unknown backend {name!r}; accepted one of {list(BACKENDS)}")
