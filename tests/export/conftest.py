"""The server ``tests/export/test_serve.py`` and ``test_browser.py`` talk to: ``zir serve``'s app over a
tiny YOLO v1, started with uvicorn on 127.0.0.1 (a free port), once per test module."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from zir.config import RunConfig
from zir.engine.predictor import Predictor
from zir.models import build_model

CLASSES = ["circle", "square", "star"]


class SlowPredictor(Predictor):
    """With ``hold`` set, predict signals ``entered`` and waits until the test sets ``release``: a slow
    image, for as long as the test needs, without any clock."""

    hold = False
    entered = threading.Event()
    release = threading.Event()

    def predict(self, images, batch_size=16):
        if self.hold:
            self.entered.set()
            self.release.wait(60)
        return super().predict(images, batch_size)


def tiny_yolo(**model_args) -> SlowPredictor:
    """A tiny YOLO v1 whose boxes are arbitrary but many: a fresh model finds nothing, so the biases of its
    last layer are drawn in [0, 1] to make it report boxes."""
    torch.manual_seed(0)
    model = build_model("yolo_v1", 3, 64, {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32,
                                           **model_args})
    with torch.no_grad():
        model.head.fc2.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    return SlowPredictor(model, CLASSES, RunConfig(model="yolo_v1"))


@pytest.fixture(scope="module")
def make_predictor():
    """:func:`tiny_yolo`, for a test module's own ``predictor`` fixture."""
    return tiny_yolo


@pytest.fixture(scope="module")
def predictor() -> SlowPredictor:
    """The model the server serves; a test module may override this fixture."""
    return tiny_yolo()


@pytest.fixture(scope="module")
def server(predictor):
    """``(url, predictor)`` of a running server; its limits: 200 000 bytes, 1 000 000 pixels."""
    pytest.importorskip("fastapi", reason="pip install 'zir[serve]' to test the server")
    import uvicorn

    from zir.export.serve import create_app

    app = create_app(predictor, max_bytes=200_000, max_pixels=1_000_000)
    # The socket is bound and listening before uvicorn starts: a request sent before it accepts waits in
    # the socket's backlog, so nothing has to poll for the server to come up.
    sock = socket.create_server(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", predictor
    srv.should_exit = True
    thread.join(10)
