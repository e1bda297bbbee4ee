"""Fixtures for the web service: the tiny trained captioner, synthetic images as bytes, app clients."""
from __future__ import annotations

import io
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'imcap[serve]')")
pytest.importorskip("python_multipart", reason="the serve extra is not installed (pip install 'imcap[serve]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install 'imcap[dev]')")

from imcap.captioner import Captioner  # noqa: E402
from imcap.decoding import DecodeOptions  # noqa: E402
from imcap.errors import ImcapError  # noqa: E402
from imcap.serve.app import create_app  # noqa: E402
from imcap.serve.settings import ServeSettings  # noqa: E402

with warnings.catch_warnings():  # newer Starlette asks for httpx2; httpx (the dev extra) still works
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="session")
def captioner(tiny_run: Path) -> Captioner:
    """The tiny trained model of tests/conftest.py, on the CPU."""
    return Captioner.load(tiny_run, "cpu")


@pytest.fixture(scope="session")
def scene_paths(tiny_data: Path) -> list[Path]:
    """The synthetic scenes behind `tiny_data` (PNG files)."""
    return sorted((tiny_data.parent / "synth" / "images").glob("*.png"))


@pytest.fixture(scope="session")
def png(scene_paths: list[Path]) -> bytes:
    """One synthetic scene as PNG bytes."""
    return scene_paths[0].read_bytes()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    """`img` saved in `fmt`, as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def expected_captions(captioner: Captioner, data: bytes, **opts) -> list[str]:
    """The captions the model gives for image bytes, computed without the service."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    caps = captioner.caption_tensors(captioner.to_tensor(image)[None], DecodeOptions(**opts))[0]
    return [c for c, _ in caps]


class Gate:
    """Wraps `captioner.caption_tensors` so that model calls block until `open()`; records batch sizes."""

    def __init__(self, captioner: Captioner) -> None:
        self.inner = captioner.caption_tensors
        self.entered = threading.Event()
        self.released = threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, images: torch.Tensor, opts: DecodeOptions | None = None, **kw) -> list:
        self.batch_sizes.append(images.size(0))
        self.entered.set()
        assert self.released.wait(20), "test gate never opened"
        return self.inner(images, opts, **kw)

    def open(self) -> None:
        self.released.set()


@pytest.fixture
def gated(captioner: Captioner, monkeypatch) -> Gate:
    """The captioner with its model calls held at a gate (opened at teardown at the latest)."""
    gate = Gate(captioner)
    monkeypatch.setattr(captioner, "caption_tensors", gate)
    yield gate
    gate.open()


@pytest.fixture
def make_client(captioner: Captioner) -> Callable:
    """`with make_client(**settings, index=..., raise_errors=True) as client:` a TestClient of a fresh app."""

    @contextmanager
    def make(index=None, model: Captioner | None = None, raise_errors: bool = True, **settings) -> Iterator[TestClient]:
        app = create_app(model or captioner, ServeSettings(**settings), index)
        with TestClient(app, raise_server_exceptions=raise_errors) as client:
            yield client

    return make


@pytest.fixture
def attention_model(captioner: Captioner, monkeypatch) -> Captioner:
    """The captioner posing as an attention model: the contract of imcap.serve.app with random 4x4 maps."""
    inner = captioner.caption_tensors

    def with_maps(images: torch.Tensor, opts: DecodeOptions | None = None, return_attention: bool = False) -> list:
        caps = inner(images, opts)
        if not return_attention:
            return caps
        return [[(c, s, torch.rand(len(c.split()), 4, 4) * 0.3) for c, s in per_image] for per_image in caps]

    monkeypatch.setattr(captioner.model.decoder, "has_attention", True, raising=False)
    monkeypatch.setattr(captioner, "caption_tensors", with_maps)
    return captioner


class FakeIndex:
    """A stand-in for imcap.search's SearchIndex: `.query(text, k) -> [(path, score)]`."""

    paths = [f"images/{i}.png" for i in range(10)]

    def query(self, text: str, k: int) -> list[tuple[str, float]]:
        if text == "fail":
            raise ImcapError("query: no known words")
        return [(p, 1.0 / (i + 1)) for i, p in enumerate(self.paths[:k])]
