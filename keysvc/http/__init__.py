"""HTTP: the public listener (JWKS, health) and the internal one (/v1/*, /metrics)."""
