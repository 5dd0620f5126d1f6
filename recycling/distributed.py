"""The processes one job runs as: one, or several started by ``accelerate launch`` (or ``torchrun``).

Under a launcher every process runs the same script. They split the cache build's batches and the
training batches between them; the main process alone writes what is shared (the cache's
manifest, checkpoints, result files, the summary, saved models). Without a launcher this is one
process and every call here is free.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    device: str | None = None  # this process's device under a launcher (e.g. cuda:1)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Every process reaches this point before any goes on."""
        if self.world > 1:
            torch.distributed.barrier()

    def share(self, value):
        """The main process's ``value``, in every process (a picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every process's ``value``, in rank order, in every process."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a tensor on this process's device."""
        if self.world > 1:
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor)
        return tensor

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block, then the others (which find what it wrote)."""
        if not self.main:
            self.wait()
        yield
        if self.main:
            self.wait()


SINGLE = Processes()


def processes() -> Processes:
    """This process's place in the job: set up by the launcher's environment (``WORLD_SIZE``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    from accelerate import PartialState

    # Joins the process group: NCCL between GPUs; gloo between CPU processes, which accelerate
    # recognises under torchrun's variables only when told there is no GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    device = "cpu" if state.device.type == "cpu" else str(state.device)
    return Processes(state.process_index, state.num_processes, device)
