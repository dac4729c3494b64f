"""Distributed data-parallel training under torchrun: process-group set-up, DDP wrapping and gradient averaging.

Training, fine-tuning and super-net training run unchanged under torchrun; launch them with::

    torchrun --nproc_per_node=2 -m latprune.cli train --model resnet20 --out runs/r20 --batch-size 128
    torchrun --nproc_per_node=2 $(which latprune) train --model resnet20 --out runs/r20 --batch-size 128

(torchrun runs a module with ``-m``, or any Python script path such as the ``latprune`` console script.) Each process
reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; :func:`init_distributed` starts the process group
(gloo on the CPU, nccl on CUDA with one GPU per local rank). Without those variables everything runs in one process
exactly as before, so a single-process run never touches ``torch.distributed``.

What the distributed loop guarantees:

- ``batch_size`` is the *global* batch: each of the K processes gets ``batch_size / K`` images per step (it must
  divide), taken as a strided shard of the same seeded epoch permutation, with the same augmentation draws. So a
  K-process run sees the same batches as a 1-process run, and with gradient averaging takes the same SGD steps
  (up to float rounding) — except that BatchNorm normalises with per-process batch statistics, as in plain DDP.
- Only rank 0 writes checkpoints, metrics and search files and shows progress bars; every rank reports the same
  (all-reduced) metrics. Resuming reads the same checkpoint on every rank, so the run folder must be on a file
  system all ranks see (any single machine).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from latprune.errors import LatpruneError

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a distributed run; the default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" or "nccl" once a process group is running, None otherwise

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise LatpruneError(
            f"The environment variable {name}={raw!r} is not an integer; launch with torchrun or unset it."
        ) from None


def dist_env() -> DistEnv:
    """The layout torchrun asked for (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process when they are absent.

    ``backend`` is the running process group's, or None before :func:`init_distributed`.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise LatpruneError(f"RANK={rank} does not fit WORLD_SIZE={world}; launch with torchrun or unset both.")
    backend = str(dist.get_backend()) if _group_running() else None
    return DistEnv(rank, world, local, backend)


def _group_running() -> bool:
    return dist.is_available() and dist.is_initialized()


def current_env() -> DistEnv:
    """The running process group's layout, or the single-process :class:`DistEnv` when none is running.

    This (not the environment variables) is what the training loop follows, so code that never called
    :func:`init_distributed` behaves exactly as a single process even inside torchrun.
    """
    if not _group_running():
        return DistEnv()
    local = _env_int("LOCAL_RANK", dist.get_rank())
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))


def init_distributed(device: str | torch.device) -> DistEnv:
    """Start the process group once (gloo for the CPU, nccl for CUDA) when torchrun launched several processes.

    A no-op returning the single-process layout when ``WORLD_SIZE`` is absent or 1, and the running group's
    layout when one is already running. On CUDA it selects the GPU of this process's local rank first, so
    ``"cuda"`` then means that GPU everywhere.
    """
    device = torch.device(device)
    if _group_running():
        return current_env()
    env = dist_env()
    if not env.is_distributed:
        return env
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        raise LatpruneError(
            f"WORLD_SIZE={env.world_size} asks for distributed training but this torch build has no {backend} "
            "backend; install a torch build with torch.distributed or run a single process."
        )
    try:
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    except (RuntimeError, ValueError) as err:
        raise LatpruneError(
            f"Could not start the {backend} process group for rank {env.rank} of {env.world_size} ({err}); launch "
            "with torchrun (it sets MASTER_ADDR and MASTER_PORT) or unset WORLD_SIZE to run a single process."
        ) from err
    atexit.register(close_distributed)
    return current_env()


def close_distributed() -> None:
    """Shut the process group down (registered at exit by :func:`init_distributed`); safe to call twice."""
    if _group_running():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process should write files and show progress: rank 0, or the only process."""
    return current_env().is_main


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if _group_running() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (and return it); a no-op in a single process."""
    if _group_running() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a floating ``tensor`` over all ranks in place (and return it); a no-op in a single process."""
    if _group_running() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, masks) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step every rank holds statistics of its
    own last batch; broadcasting rank 0's makes every rank evaluate exactly the model rank 0 saves.
    """
    if not (_group_running() and dist.get_world_size() > 1):
        return
    for buf in model.buffers():
        dist.broadcast(buf, src)


def wrap_ddp(model: nn.Module, env: DistEnv, device: str | torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when ``env`` is distributed, else ``model`` itself.

    Buffers are not broadcast at every forward: in train mode BatchNorm normalises with batch statistics, so
    other ranks' running statistics never affect a step, and rank 0's own ones are the same either way; call
    :func:`broadcast_buffers` before evaluating or saving. (This also avoids DDP's in-place buffer copy, which
    fails on a lone channels-last buffer such as the weight mask of a 1-channel input layer.) Use
    :func:`latprune.train.unwrap` to get the bare model back (for saving or hooks).
    """
    if not env.is_distributed:
        return model
    device = torch.device(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def average_gradients(params: nn.Module | Iterable[nn.Parameter], env: DistEnv) -> None:
    """Average every parameter's gradient over all ranks in one all-reduce, for code that cannot use DDP.

    The super-net trains different candidates on different ranks, so a parameter can have a gradient on some
    ranks and None on others: None counts as zero, and a parameter stays None only when no rank gave it a
    gradient — so SGD still skips it (no weight decay, no momentum) exactly as a single process would.
    """
    if not env.is_distributed:
        return
    plist = [p for p in (params.parameters() if isinstance(params, nn.Module) else params) if p.requires_grad]
    if not plist:
        return
    ref = plist[0]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32) for p in plist]
    has = torch.tensor([p.grad is not None for p in plist], dtype=torch.float32, device=ref.device)
    flat = torch.cat([*parts, has])  # (sum numel + n_params,): one collective for the grads and their presence
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    present = flat[-len(plist) :].tolist()
    offset = 0
    for p, count in zip(plist, present, strict=True):
        n = p.numel()
        if count == 0:
            p.grad = None
        else:
            p.grad = (flat[offset : offset + n] / env.world_size).view_as(p).to(p.dtype)
        offset += n
