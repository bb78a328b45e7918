"""Where the gateway store is: `StoreSettings` and `read_password`, defined with the configuration
(keysvc.config.store_url, stdlib only) so that reading a configuration checks a store URL by the store's
own rules without loading the store."""

from __future__ import annotations

from keysvc.config.store_url import DEFAULT_FALLBACK_DIVISOR, DEFAULT_TIMEOUT, SCHEMES, StoreSettings, read_password

__all__ = ["DEFAULT_FALLBACK_DIVISOR", "DEFAULT_TIMEOUT", "SCHEMES", "StoreSettings", "read_password"]
