"""Key-store backends, chosen by name from `REGISTRY` (see `keysvc.backends.registry`)."""
