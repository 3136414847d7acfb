"""Training on several devices: PyTorch DistributedDataParallel in processes launched by ``torchrun``.

Everything that knows about more than one process is here, so ``train`` reads as the one-process loop
it is. Without torchrun's environment (``WORLD_SIZE`` unset or 1) every helper is the identity and no
process group exists: one process behaves as plain ``mhunet train``. ``mhunet train --gpus N`` starts
the N processes itself (``relaunch``).

The rules, recorded in the checkpoint's JSON (``distributed``):

- one device per rank (``cuda:LOCAL_RANK``, NCCL; or the CPU, gloo);
- ``--batch-size`` is per rank, so the global batch is N x batch; the peak LR is scaled by ``sqrt(N)``
  (default: the square-root rule for Adam-type optimisers, Malladi et al. 2022), ``N`` (``linear``,
  Goyal et al. 2017, the rule for SGD) or not at all (``none``);
- gradients are averaged across ranks by DDP; BatchNorm statistics stay per rank (32 crops of 128 x 128
  pixels per rank are half a million values per channel) and their running means are rank 0's (DDP
  broadcasts buffers);
- rank 0 alone logs, writes checkpoints and predicts the held-out fold; the others wait at a barrier;
- time-based decisions (the wall-clock budget, the cosine schedule over it) use rank 0's clock, so
  every rank takes the same LR and stops at the same step (a rank that stopped alone would hang DDP).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import uuid
import warnings

import torch
import torch.distributed as dist

LR_SCALING = ("sqrt", "linear", "none")


def launched() -> bool:
    """Inside a torchrun worker of a multi-process run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without torchrun); valid before the process group exists."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """This rank's device; under torchrun also the process group (once): NCCL on CUDA, gloo on CPU.

    ``device`` is the one-process choice (auto, cpu, cuda): with several ranks, CUDA means
    ``cuda:LOCAL_RANK``, so an explicit index is refused."""
    from .errors import InputError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if not launched():
        return torch.device(device)
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device} with several processes; give cuda (one GPU per rank) or cpu")
    local = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError(
                f"{world_size()} processes per node but PyTorch sees {torch.cuda.device_count()} CUDA "
                "GPUs; give --gpus (torchrun --nproc_per_node) at most that"
            )
        torch.cuda.set_device(local)
    dev = torch.device(f"cuda:{local}" if device == "cuda" else "cpu")
    if not active():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None
        )
    return dev


def teardown() -> None:
    """Leave the process group (all ranks together), if there is one."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` (its weights are broadcast from rank 0 here), or ``model`` itself."""
    if not active():
        return model
    # The stem convolution reads one channel: its weight's gradient may come with another stride for
    # that size-1 axis, the same memory layout, about which DDP warns once per rank.
    warnings.filterwarnings(
        "ignore", r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, 1, "
    )
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _reduced(value: float, device: torch.device, op: str) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if op == "broadcast":
        dist.broadcast(t, src=0)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "mean" else dist.ReduceOp.MAX)
        if op == "mean":
            t /= world_size()
    return float(t.item())


def from_main(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (the clock behind the budget and the schedule)."""
    return _reduced(value, device, "broadcast")


def mean(value: float, device: torch.device) -> float:
    """The mean over ranks (a loss to log: each rank's is its own shard's)."""
    return _reduced(value, device, "mean")


def weight_spread(model: torch.nn.Module, device: torch.device) -> float:
    """Largest |rank's parameter - rank 0's| over all parameters and ranks (0.0 alone): rank 0's
    checkpoint stands for every rank only if this is 0."""
    if not active():
        return 0.0
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    return _reduced(float((flat - ref).abs().max()), device, "max")


def scaled_lr(lr: float, world: int, rule: str) -> float:
    """The peak LR for ``world`` ranks of the per-rank batch that ``lr`` was chosen for."""
    if rule not in LR_SCALING:
        raise ValueError(f"unknown LR scaling {rule!r}; choose one of {', '.join(LR_SCALING)}")
    return lr * {"sqrt": math.sqrt(world), "linear": world, "none": 1}[rule]


def relaunch(nproc: int, device: str, argv: list[str]) -> int:
    """This command line again in ``nproc`` processes on this node, by torchrun's own launcher (what
    ``python -m torch.distributed.run --standalone`` runs) called here, so that a worker's one-line error
    is the whole output rather than torchrun's failure report; the first failed worker's exit code."""
    from .errors import InputError

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device != "cpu" and gpus < nproc:
        raise InputError(
            f"--gpus {nproc} but PyTorch sees {gpus} CUDA GPUs; give --gpus {gpus}"
            if gpus
            else f"--gpus {nproc} but PyTorch sees no CUDA GPU; give --device cpu for {nproc} CPU processes"
        )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its banner
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # the agent's notes on a failed worker
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "mhunet_deploy.cli", *argv)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # killed by signal -code
    except SignalException as e:  # this process was signalled; the launcher has stopped the workers
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        return 128 + int(e.sigval)
    return 0
