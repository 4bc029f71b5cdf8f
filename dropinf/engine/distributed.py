"""Several processes computing one run: ``torch.distributed`` (torchrun), or one process alone.

A ``Team`` is the processes of the job as the engine sees them: its rank, its size, and the few
collectives a fit needs, each a plain ``torch.distributed`` call (gloo for CPU tensors, NCCL for
CUDA ones): summing statistics (``sum_into``), gathering per-slice results on rank 0
(``gather_rows``), and agreeing on decisions and failures (``from_leader``, ``together``), whose
small JSON payloads travel as byte tensors (nothing is pickled). A team of one does no
communication at all: each method then just runs its work, so a single process behaves exactly
as it did before teams existed.

``torchrun_process_group`` initialises the default process group from the environment torchrun
sets (``python -m dropinf`` under ``torchrun``) and destroys it at exit.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dropinf import errors
from dropinf.errors import ConfigError, RunDirectoryError
from dropinf.run import RunStore

T = TypeVar("T")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Team:
    """The processes computing one run, seen from one of them.

    Attributes:
        rank: This process's rank (0: the leader, the one that writes the run's shared files).
        size: How many processes compute the run (1: no communication).
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Team:
        """The default process group's team when one is initialised, else a team of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        """True when more than one process computes the run."""
        return self.size > 1

    @property
    def leader(self) -> bool:
        """True for rank 0, the process that writes the manifest and the run-wide files."""
        return self.rank == 0

    def share(self, count: int) -> range:
        """This process's contiguous share of ``count`` items: disjoint, covering, in rank order."""
        return range(count * self.rank // self.size, count * (self.rank + 1) // self.size)

    def label(self) -> str:
        """``process 2 of 4`` (1-based, for people)."""
        return f"process {self.rank + 1} of {self.size}"

    # agreement
    def together(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every process; if it fails on any, raise on all.

        The failing process re-raises its own exception; the others raise the same error type
        with its message and the rank it came from, so no process waits for a peer that left.
        """
        if not self.distributed:
            return work()
        failure: Exception | None = None
        try:
            result = work()
        except Exception as error:  # every failure is shared, then re-raised
            failure, result = error, None
        reports = self.all_gather_json(None if failure is None else describe(failure))
        if failure is not None:
            raise failure
        for rank, report in enumerate(reports):
            if report is not None:
                raise rebuilt_error(report, Team(rank, self.size))
        return result

    def from_leader(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the leader only; every process gets its (JSON) result or its error."""
        if not self.distributed:
            return work()
        value = self.together(work if self.leader else lambda: None)
        return self.broadcast_json(value)

    def check_same(self, what: str, value: Any) -> None:
        """Refuse to go on unless every process holds the same (JSON) ``value``.

        Raises:
            ConfigError: Some process holds another value (on every process).
        """
        if not self.distributed:
            return
        values = self.all_gather_json(value)
        if any(other != values[0] for other in values):
            raise ConfigError(
                f"{what}: expected the same on every process of the job, found {values} (by rank)"
            )

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            self.sum_into(torch.zeros(1))

    # collectives on tensors
    def sum_into(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its sum over the processes (in place, on its own device)."""
        if not self.distributed:
            return
        device = collective_device(tensor.device)
        if device == tensor.device:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            return
        moved = tensor.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved)

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Every process's ``rows`` (r_p, ...) concatenated in rank order, on the leader (CPU).

        Returns:
            The (Σ r_p, ...) tensor on the leader; None on the other processes.
        """
        if not self.distributed:
            return rows.cpu()
        device = collective_device(rows.device)
        counts = [int(c) for c in self._all_gather_ints(torch.tensor([rows.shape[0]]), device)]
        padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
        padded[: rows.shape[0]] = rows.to(device)
        parts = [torch.empty_like(padded) for _ in counts] if self.leader else None
        dist.gather(padded, parts, dst=0)
        if not self.leader:
            return None
        return torch.cat([part[:count].cpu() for part, count in zip(parts, counts, strict=True)])

    # JSON payloads as byte tensors
    def broadcast_json(self, value: Any) -> Any:
        """The leader's JSON ``value``, on every process."""
        device = collective_device(torch.device("cpu"))
        payload = json_bytes(value if self.leader else None).to(device)
        length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
        dist.broadcast(length, src=0)
        size = int(length)
        buffer = payload if self.leader else torch.empty(size, dtype=torch.uint8, device=device)
        dist.broadcast(buffer, src=0)
        return json.loads(bytes(buffer.cpu().tolist()))

    def all_gather_json(self, value: Any) -> list[Any]:
        """Every process's JSON ``value``, by rank."""
        device = collective_device(torch.device("cpu"))
        payload = json_bytes(value).to(device)
        lengths = self._all_gather_ints(torch.tensor([payload.numel()]), device)
        padded = torch.zeros(int(max(lengths)), dtype=torch.uint8, device=device)
        padded[: payload.numel()] = payload
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return [
            json.loads(bytes(part[: int(length)].cpu().tolist()))
            for part, length in zip(parts, lengths, strict=True)
        ]

    def _all_gather_ints(self, value: torch.Tensor, device: torch.device) -> list[int]:
        """One int64 per process, gathered (the sizes of what follows)."""
        parts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.size)]
        dist.all_gather(parts, value.to(device=device, dtype=torch.int64))
        return [int(part) for part in parts]


@contextlib.contextmanager
def locked_run(store: RunStore, team: Team) -> Iterator[None]:
    """Hold the run's writer lock for the block: one job writes a run directory at a time.

    The folder is checked first and temporaries of killed writers are removed (the lock says
    none is alive). Under torchrun only rank 0 takes the lock, for the whole job: the other
    ranks wait until it has (or share its error), and it is released once every rank is done.

    Raises:
        RunDirectoryError: The folder cannot hold a run.
        RunLockedError: Another job is writing the run directory.
    """
    if not team.distributed:
        store.check_location()
        with store.writer_lock():
            store.remove_temporaries()
            yield
        return
    with contextlib.ExitStack() as held:

        def take() -> None:
            store.check_location()
            held.enter_context(store.writer_lock())
            store.remove_temporaries()

        team.from_leader(take)
        yield
        team.barrier()


def check_shared(store: RunStore, team: Team) -> None:
    """Refuse a run directory that rank 0 wrote but this process does not see.

    Raises:
        RunDirectoryError: The manifest rank 0 wrote is not there (not a shared filesystem).
    """
    if not store.exists():
        raise RunDirectoryError(
            f"expected the run directory {store.run_dir} on a filesystem shared by every "
            f"process of the job, found no manifest there from {team.label()}"
        )


def collective_device(device: torch.device) -> torch.device:
    """Where a tensor on ``device`` can take part in the default group's collectives.

    gloo handles CPU tensors, NCCL CUDA ones; a group with both (``cpu:gloo,cuda:nccl``, as
    ``torchrun_process_group`` makes) keeps each tensor where it is.
    """
    backend = str(dist.get_backend()).lower()
    if device.type == "cuda" and "nccl" in backend:
        return device
    if "gloo" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def json_bytes(value: Any) -> torch.Tensor:
    """``value`` as UTF-8 JSON in a uint8 tensor."""
    return torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)


def describe(error: Exception) -> dict[str, str]:
    """What another process needs to raise the same error: its type and message."""
    kind = type(error)
    return {"module": kind.__module__, "type": kind.__qualname__, "message": str(error)}


def rebuilt_error(report: dict[str, str], origin: Team) -> Exception:
    """The error another process raised, as the same type, its message naming that process.

    dropinf's errors and built-in exceptions keep their type (so the CLI still reports bad input
    with exit status 2); any other becomes a RuntimeError naming the original type.
    """
    message = f"{report['message']} ({origin.label()})"
    source = {"dropinf.errors": errors, "builtins": builtins}.get(report["module"])
    kind = getattr(source, report["type"], None) if source is not None else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        with contextlib.suppress(TypeError):
            return kind(message)
    return RuntimeError(f"{report['module']}.{report['type']}: {message}")


def launched_by_torchrun() -> bool:
    """True when the environment torchrun gives its workers is set (rank, size, rendezvous)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def process_group_backend() -> str:
    """The backend: gloo for CPU tensors, plus NCCL for CUDA ones where CUDA and NCCL exist."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@contextlib.contextmanager
def torchrun_process_group() -> Iterator[None]:
    """Under torchrun, hold the default process group for the block (and one GPU per process).

    Initialises the group from the torchrun environment (``env://``), gives each process the
    GPU of its local rank when there are GPUs, silences the standard output of every rank but
    0 (so one summary is printed), and destroys the group at the end. Without torchrun, or when
    a group is already initialised, does nothing.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(process_group_backend())
    try:
        if dist.get_rank() == 0:
            yield
        else:
            with open(os.devnull, "w") as silent, contextlib.redirect_stdout(silent):
                yield
    finally:
        sys.stdout.flush()
        dist.destroy_process_group()
