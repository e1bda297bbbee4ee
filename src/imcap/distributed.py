"""Many processes, one model: torchrun/DistributedDataParallel setup and teardown, rank-0 logging,
collectives the training loop needs, and the `imcap train --nproc N` launcher.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `session()` turns them into a process group (NCCL on
GPUs, gloo on CPUs). Every rank trains on its shard of each epoch (see `ResumableSampler`); DDP averages
the gradients, so the weights stay identical; rank 0 alone validates, logs and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 validates while the others wait at a barrier


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


def env_world() -> World:
    """The world torchrun describes in the environment (a single process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def current_world() -> World:
    """The world of the initialised process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
    return World()


def backend_for(device: torch.device) -> str:
    """NCCL for GPUs, gloo for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process on a node: cuda:LOCAL_RANK (and make it current); CPUs are unchanged."""
    if device.type != "cuda" or not world.distributed:
        return device
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[World]:
    """Join the process group torchrun describes (if any, and not joined yet); leave it on exit.

    Ranks other than 0 log warnings only.
    """
    world = env_world()
    owned = False
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            local_device(device, world)
        dist.init_process_group(backend_for(device), timeout=TIMEOUT)
        owned = True
    world = current_world()
    previous = logging.getLogger("imcap").level
    if not world.is_main:
        logging.getLogger("imcap").setLevel(logging.WARNING)
    try:
        yield world
    finally:
        logging.getLogger("imcap").setLevel(previous)
        if owned:
            dist.destroy_process_group()


class TrainForward(nn.Module):
    """What DDP wraps: `forward(fn, *args)` runs `fn(model, *args)`.

    Teacher forcing and self-critical sampling are different functions of the same model; routing both
    through one module's forward lets DDP prepare its gradient hooks for either.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn, *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def wrap(model: nn.Module, world: World, device: torch.device, find_unused: bool = False) -> nn.Module:
    """TrainForward(model), inside DistributedDataParallel when there are several processes.

    `find_unused`: some parameters may get no gradient in a step (a frozen CNN).
    """
    net = TrainForward(model)
    if not world.distributed:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused)


def mean_across(values: list[float], world: World) -> list[float]:
    """Average scalars over the ranks (every rank must call it); unchanged for one process."""
    if not world.distributed:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world.size).tolist()


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's `obj`, in rank order (every rank must call it)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.distributed:
        dist.barrier()


def rank_rng_state(ckpt: dict, world: World) -> dict:
    """The RNG state this rank saved in `ckpt` (exact resume needs the same number of processes)."""
    saved = int(ckpt.get("world_size", 1))
    if saved != world.size:
        log.warning("the checkpoint was written by %d process(es) and is resumed by %d: training goes on, but not exactly as an uninterrupted run would", saved, world.size)
    ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
    return ranks[world.rank % len(ranks)]


# ---------------------------------------------------------------- the --nproc launcher
def options_to_argv(opts: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The `imcap train` flags that rebuild `opts` (fields left at their defaults, and `skip`, are omitted)."""
    argv: list[str] = []
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if f.metadata.get("cli") is False or value == f.default or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def torchrun_command(opts: Any, nproc: int) -> list[str]:
    """The torchrun command line that runs `imcap train` with `opts` in `nproc` local processes.

    --nproc itself is left out: the workers find their world in the environment, and torchrun's own
    parser would take `--nproc` for an abbreviation of its --nproc-per-node.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "imcap", "train", *options_to_argv(opts, skip=("nproc",))]


def launch(opts: Any, nproc: int) -> int:
    """Run `imcap train` in `nproc` processes on this machine with torchrun; return its exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = torchrun_command(opts, nproc)
    log.info("launching %d training processes: %s", nproc, " ".join(cmd[1:]))
    return subprocess.run(cmd, env=env, check=False).returncode

