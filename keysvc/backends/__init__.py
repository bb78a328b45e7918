"""Key-store backends, opened from their settings (keysvc.config.backends) by `keysvc.backends.registry`."""
