"""
Where and how a model runs: the processes torchrun starts (DDP), the device, the precision, the
attention kernel and torch.compile. train.py, bench.py, sample.py and evaluate.py share it.
"""
import os
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16, by device name


def pick_device(device="auto"):
    """'auto': the best this machine has (cuda, then mps, then cpu); otherwise `device` as given."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def processes():
    """(ddp, rank, local rank, world size), from torchrun's environment (one process without it)."""
    env = lambda key, default: int(os.environ.get(key, default))
    return "RANK" in os.environ, env("RANK", 0), env("LOCAL_RANK", 0), env("WORLD_SIZE", 1)


def resolve(cfg):
    """(device, device type, dtype, compile, attention) of a train config, each 'auto' settled for
    this machine."""
    device = pick_device(cfg["device"])
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = cfg["dtype"]
    if dtype == "auto":
        bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float32"
    use_compile = cfg["compile"] if cfg["compile"] != "auto" else device_type == "cuda"
    attention = cfg["attention"]
    if attention == "auto":
        attention = "flex" if device_type == "cuda" else "sdpa"
    return device, device_type, dtype, use_compile, attention


def check_dtype(dtype, device_type):
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("error: dtype=bfloat16: this GPU has no bfloat16; use --dtype=float32")


def own_kernel(setting, attention, device_type):
    """The own_kernel option settled: 'auto' uses kernels.py where flex runs on a GPU with Triton."""
    from attention import kernels
    if setting is True and kernels is None:
        raise SystemExit("error: own_kernel=True needs Triton (CUDA builds of torch ship it)")
    if setting != "auto":
        return setting
    return attention == "flex" and device_type == "cuda" and kernels is not None


def check_attention(model_config, attention):
    head_dims = [model_config.n_embd // model_config.n_head]
    head_dims += [s.n_embd // s.n_head for s in model_config.streams]
    if attention == "flex" and min(head_dims) < 16:
        raise SystemExit(f"error: fused flex attention needs head sizes of at least 16 (n_embd / "
                         f"n_head), got {head_dims}; use fewer heads, or --attention=sdpa")


def peak_flops(device):
    """The device's dense bf16 peak in FLOP/s, for MFU; None where it is not known."""
    if torch.device(device).type != "cuda":
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name(device)), None)


@dataclass
class Runtime:
    """This process among the others, and the device, precision and kernels it trains with."""
    ddp: bool
    rank: int
    local_rank: int
    world: int
    device: str
    device_type: str
    dtype: str
    use_compile: bool
    attention: str
    autocast: Any           # bfloat16 autocast, or a no-op
    peak_flops: Any         # the device's dense bf16 FLOP/s where known (for MFU), else None

    @property
    def master(self):
        return self.rank == 0


def start_runtime(cfg):
    """Settle the 'auto' options, pick this process's device and join the other processes."""
    ddp, rank, local_rank, world = processes()
    device, device_type, dtype, use_compile, attention = resolve(cfg)
    check_dtype(dtype, device_type)
    if ddp and device_type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else nullcontext())
    # TF32 matmuls under bf16 autocast only: dtype=float32 means float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype == "bfloat16"
    return Runtime(ddp, rank, local_rank, world, device, device_type, dtype, use_compile, attention,
                   autocast, peak_flops(device))


def compile_model(model, mode="default"):
    """torch.compile with static shapes: training and evaluation batches each get their own graph.
    With automatic dynamic shapes, the step-0 evaluation made the training graph recompile with
    symbolic sizes; static graphs are the ones whose FlexAttention gradients were checked against
    SDPA on an H200."""
    return torch.compile(model, dynamic=False, **({} if mode == "default" else dict(mode=mode)))


def new_graph_step(mode):
    """With CUDA graphs (reduce-overhead, max-autotune), each model call starts a new replay: the
    previous call's outputs are no longer read (losses are summed into new tensors first)."""
    if mode in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()


class StopSignal:
    """Ctrl-C or SIGTERM asks the loop to finish its step, save a checkpoint and exit."""

    def __init__(self, print0):
        self.signum = 0  # the signal that asked to stop
        self.print0 = print0
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum, frame):
        if self.signum:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: leave now
            # a job's SIGTERM can come twice (sent to every process, and forwarded by torchrun)
            return
        self.signum = signum
        self.print0(f"\n{signal.Signals(signum).name}: finishing this step, then saving a "
                    f"checkpoint")


def agree_to_stop(rt, signum, at_log):
    """The signal that stops the run after this step, or 0. Every process must stop at the same
    step: with DDP they agree at log steps (a host sync), not at every step."""
    if not rt.ddp:
        return signum
    if not at_log:
        return 0
    flag = torch.tensor(float(signum), device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def end_processes(exit_status):
    """Every process leaves together, then ends here, skipping the interpreter's teardown: there,
    freeing DDP's reducer destroys the gloo process group while holding the GIL, and joins a gloo
    thread that may be waiting for the GIL to free a finished collective's tensors (a torch
    deadlock, seen with torch 2.13 and two CPU processes). Nothing is left to save."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status)
