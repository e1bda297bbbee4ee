"""Speed options of `imcap train`: mixed precision (--amp), torch.compile (--compile), channels_last."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from imcap.errors import ImcapError

log = logging.getLogger(__name__)

AMP_DTYPES = ("auto", "bf16", "fp16")


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype for `--amp-dtype name`: auto is bf16 on CPU and on GPUs that support it, else fp16."""
    if name not in AMP_DTYPES:
        raise ImcapError(f"--amp-dtype {name}: choose one of {', '.join(AMP_DTYPES)}")
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class Precision:
    """Autocast plus a GradScaler (fp16 only); a pass-through when disabled.

    Usage per step: `with p.autocast(): loss = ...`; `p.backward(loss)`; `p.unscale(opt)` before clipping;
    `p.step(opt)` for each optimiser; `p.update()` once.
    """

    def __init__(self, device: torch.device, enabled: bool, dtype: str = "auto") -> None:
        self.device = device
        self.enabled = enabled
        self.dtype = amp_dtype(device, dtype) if enabled else torch.float32
        use_scaler = enabled and self.dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the chosen dtype (a null context when disabled)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate the (scaled) loss."""
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step, skipped by the scaler when fp16 gradients overflowed."""
        self.scaler.step(optimizer)

    def update(self) -> None:
        """Adjust the loss scale after a step."""
        self.scaler.update()

    def state_dict(self) -> dict:
        """The scaler state (empty when no scaler is in use), for exact resume."""
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore `state_dict()` output; ignored when either side has no scaler."""
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Put the CNN in channels_last memory format on CUDA (faster convolutions); True when done."""
    backbone = getattr(getattr(model, "encoder", None), "backbone", None)
    if device.type != "cuda" or backbone is None:
        return False
    backbone.to(memory_format=torch.channels_last)
    return True


def channels_last_input(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Images (B, 3, S, S) in channels_last layout when `enabled`; other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.dim() == 4 else x


# (module, method name) pairs compiled by `compile_model`: the whole teacher-forcing forward, CNN
# included. The decoder's step is left eager: word-by-word sampling breaks the graph and changes
# shapes (B*K samples, B greedy rows), and compiling it made SCST steps slower (benchmarks/bench_gpu.py).
def _targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(model, "forward")]


def uncompile_model(model: nn.Module) -> None:
    """Undo `compile_model` (the compiled methods are instance attributes; the class methods come back)."""
    for module, name in _targets(model):
        if name in vars(module):
            delattr(module, name)


@contextlib.contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore the RNG and every buffer (BatchNorm statistics) after a trial step, so resume stays exact."""
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
            for p in model.parameters():
                p.grad = None


def compile_model(model: nn.Module, trial: Callable[[], None], backend: str | Callable = "inductor") -> bool:
    """torch.compile the model's forward; run `trial()` (a forward and backward) to check.

    Compilation happens at the first call, so failures show up in the trial: then the model is put back
    to eager mode with a one-line warning and False is returned. The trial leaves no trace (RNG, buffers
    and gradients are restored).
    """
    if not hasattr(torch, "compile"):
        log.warning("--compile: torch.compile is not available in torch %s; training without it", torch.__version__)
        return False
    try:
        for module, name in _targets(model):
            setattr(module, name, torch.compile(getattr(module, name), backend=backend))
        with _preserved(model):
            trial()
    except Exception as exc:  # any backend/compiler failure: fall back to eager
        uncompile_model(model)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        log.warning("--compile: torch.compile failed (%s: %s); training without it", exc.__class__.__name__, first[:160])
        return False
    return True
