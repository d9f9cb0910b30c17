"""One training job in one or several processes: who writes, and how the processes agree (docs/ARCHITECTURE.md, "Several processes").

`accelerate launch` (configs/accelerate/), torchrun or mpirun start the same script once per process and
tell each process its place through the environment (WORLD_SIZE and RANK; MPI's own variables under
mpirun). Every process trains its share of each batch; only the main process (global rank 0) writes run
folders, `latest` and reports, so a shared filesystem never sees two writers of one file. A value that a
process would compute from its own clock or filesystem view (the default run_id, a time stamp) is decided
by rank 0 and broadcast, so processes started a second apart still agree on one run folder.

A plain `python scripts/...` run is one process: nothing here imports torch or starts a process group then.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from lib.common.errors import UsageError

T = TypeVar("T")

# torchrun / accelerate set WORLD_SIZE; the others are what MPI launchers set (the names accelerate reads)
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """How many processes the launcher started for this job (1 when run directly)."""
    for name in WORLD_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise UsageError(
                    f"the environment variable {name}={value!r} is not a number of processes.",
                    fix=f"unset {name}, or start the job with `accelerate launch` (configs/accelerate/).",
                ) from None
    return 1


@dataclass(frozen=True)
class Processes:
    """This process's place in the job. `Processes.start(device)` joins the process group when there is one."""

    world_size: int = 1
    rank: int = 0
    cpu: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls, device: str) -> Processes:
        """Join the launcher's process group (gloo on CPU, NCCL on CUDA); one process: nothing to join."""
        world_size = launched_world_size()
        if world_size == 1:
            return cls(cpu=device == "cpu")
        if device == "mps":
            raise UsageError(
                f"{world_size} processes were launched on Apple MPS, which trains in one process only.",
                fix="run the script directly (python scripts/main_trainer.py ...), without accelerate launch.",
            )
        # accelerate's PartialState is the state TRL's trainers use too: Trainer re-creates it over the
        # same process group, so joining here first changes nothing for them.
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return cls(world_size=state.num_processes, rank=state.process_index, cpu=device == "cpu")

    def _state(self):
        from accelerate import PartialState

        # TrainingArguments resets accelerate's shared state and builds it again; asking for it here (a
        # no-op when it exists) keeps these helpers working before, during and after a trainer
        return PartialState(cpu=self.cpu)

    def agree(self, value: T) -> T:
        """Rank 0's value on every process (what rank 0 decided wins)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        self._state()
        return broadcast_object_list([value], from_process=0)[0]

    def barrier(self) -> None:
        """Wait until every process got here (after the main process wrote what the others will read)."""
        if self.distributed:
            self._state().wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. fills a cache); the others then find it done."""
        if not self.distributed:
            yield
            return
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def describe(self) -> str:
        return f"process {self.rank} of {self.world_size}"
