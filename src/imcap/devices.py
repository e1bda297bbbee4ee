"""Device selection: `--device auto|cpu|cuda|cuda:N|mps` checked by name (no torch import) and resolved."""
from __future__ import annotations

import re

from imcap.errors import ImcapError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device_name_error(name: str) -> str | None:
    """Why `name` is not a device name (None when it is one): for option validation, without torch."""
    if isinstance(name, str) and DEVICE_PATTERN.match(name):
        return None
    return f"must be auto, cpu, cuda, cuda:N or mps (got {name!r})"


def pick_device(name: str = "auto"):
    """The torch.device for a `--device` value: 'auto' is cuda when available, else cpu."""
    import torch

    problem = device_name_error(name)
    if problem:
        raise ImcapError(f"--device {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ImcapError(f"--device {name}: CUDA is not available on this machine")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ImcapError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ImcapError("--device mps: Apple's MPS backend is not available on this machine")
    return torch.device(name)
