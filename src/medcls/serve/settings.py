"""Service settings (one class; the CLI fills it)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServeSettings(BaseModel):
    bundle: str = Field(..., description="Bundle directory (or a run directory with backend=torch).")
    backend: str = Field("onnx", description="torch | onnx | int8")
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="The model's name on the Open "
                                   "Inference Protocol routes (/v2/models/<name>); default: the bundle folder's name.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    api_key_file: str | None = Field(None, description="File holding the API key (e.g. a mounted secret).")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1, description="Images with more pixels are refused (decompression bombs).")
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_files: int = Field(64, ge=1, description="Files per /v1/predict/batch request.")
    threads: int | None = Field(None, ge=1)
    max_concurrency: int = Field(64, ge=1, description="Requests to /v1/ in flight (body received, being decoded "
                                 "or predicted) at most; more get 503 with Retry-After instead of queueing without bound.")
    max_receiving: int = Field(256, ge=1, description="Requests to /v1/ whose bodies are still arriving at most; "
                               "more get 503 with Retry-After (bounds connections and spooled uploads).")
    header_timeout: float = Field(10.0, gt=0, description="Seconds a connection may take to send a request's "
                                  "headers (from connecting, or from the previous response); then 408 and close.")
    body_timeout: float = Field(60.0, gt=0, description="Seconds a request may take to send its whole body; "
                                "then 408 and close.")
    min_body_rate: float = Field(1024.0, gt=0, description="Bytes/s a request body must arrive at on average over "
                                 "the time the server waits for it, after 5 s of waiting; slower gets 408 and close.")
    decode_pixels: int = Field(20_000_000, ge=1, description="Pixels being decoded and preprocessed at once, over "
                               "all requests; larger images wait their turn (bounds memory under big uploads).")
    refuse_ood: bool = Field(False, description="Refuse (422) images the bundle's out-of-distribution gate flags, "
                             "instead of answering with ood.flagged = true.")
    protect_metrics: bool = Field(False, description="Require the API key on /metrics too.")
    protect_docs: bool = Field(False, description="Require the API key on /docs, /redoc and /openapi.json too.")
