"""What `resnetkit serve` is told: the served file and the service's limits (one record, read by every worker)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ServeSettings:
    checkpoint: str
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting; more -> 503 with Retry-After
    max_body_mb: float = 20.0  # -> 413
    max_pixels: int = 40_000_000  # per image, from its header; more -> 413
    max_images: int = 64  # per request
    topk: int = 5
    timeout_s: float = 30.0  # per request, queueing included -> 504
    threads: int | None = None  # torch (and so ONNX Runtime) threads in each worker process
    model_name: str | None = None  # OIP v2's model name (default: the served model's architecture)
    model_version: str = "1"  # OIP v2's model version
    grpc_port: int | None = None  # OIP v2 over gRPC on this port (0: a free one, see /v1/metadata); None: no gRPC
    grpc_host: str = "127.0.0.1"
    api_key: str | None = field(default=None, repr=False)  # Bearer key for all but health/readiness; never shown
    runtime: str | None = None  # what an exported file runs on (`--runtime`; None: the file's own, auto for ONNX)

    def public(self) -> dict:
        """The settings as /v1/metadata shows them: the API key left out (only whether one is set)."""
        shown = {k: v for k, v in asdict(self).items() if k != "api_key"}
        return shown | {"api_key_required": self.api_key is not None}
