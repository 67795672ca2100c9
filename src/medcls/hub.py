"""The Hugging Face hub: is it reachable, and a way to make huggingface_hub really offline for a while.

Hand-written because huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import: setting the
environment variable later changes nothing, and an unreachable hub then costs ~47 s of
retries per file before the error. A reachability probe bounded in time (DNS included)
lets medcls fail in seconds with a message that says what to do.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

TRUE = ("1", "true", "yes", "on")


def _endpoint_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub does not answer within ``timeout`` seconds (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE:
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((_endpoint_host(), 443), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout + 0.5)
    return bool(answer and answer[0])


@contextmanager
def offline_hub() -> Iterator[None]:
    """huggingface_hub (and the timm/transformers loaders over it) use the local cache only, inside the block."""
    import huggingface_hub.constants as constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
