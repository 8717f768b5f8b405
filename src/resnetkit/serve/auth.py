"""Access control: with an API key set, every endpoint but health and readiness needs `Authorization: Bearer KEY`
(REST) or the same `authorization` metadata (gRPC). The key is compared in constant time and never logged or shown."""

from __future__ import annotations

import hmac

# answered without a key: orchestrators probe these (Kubernetes liveness/readiness, load balancers)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
REFUSAL = "missing or wrong API key: send the header 'Authorization: Bearer KEY'"


def allowed(authorization: str | None, key: str | None) -> bool:
    """Whether a request carrying this Authorization value may pass (always, when no key is set)."""
    if key is None:
        return True
    return authorization is not None and hmac.compare_digest(authorization.encode(), f"Bearer {key}".encode())
