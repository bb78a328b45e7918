"""Writes a JWKS document to S3.

Each change of a keyset's JWKS is written to `<key_prefix><keyset>/jwks.json` (and, for the default keyset,
also to `<key_prefix>.well-known/jwks.json`) with the same Cache-Control as the service sends. The object's
body is byte-for-byte the served body; the service's ETag is kept in the object's metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from keysvc.errors import BackendUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


class S3Mirror:
    """Writes JWKS documents to one S3 bucket. Blocking: call from a worker thread.

    Takes settings already validated by keysvc.config (the `mirror` section)."""

    def __init__(
        self,
        bucket: str,
        key_prefix: str,
        region: str | None,
        endpoint_url: str | None = None,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.bucket = bucket
        self.key_prefix = key_prefix
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": 3},
            user_agent_extra="keysvc",
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=config
        )

    def __repr__(self) -> str:
        return f"S3Mirror(bucket={self.bucket!r}, key_prefix={self.key_prefix!r})"

    def keys_for(self, keyset: str, default: bool) -> list[str]:
        """The object keys one keyset's JWKS is written to."""
        keys = [f"{self.key_prefix}{keyset}/jwks.json"]
        if default:
            keys.append(f"{self.key_prefix}.well-known/jwks.json")
        return keys

    def put(self, keyset: str, body: bytes, etag: str, cache_control: str, default: bool = False) -> None:
        """Write the JWKS of `keyset`. Raises BackendUnavailable when S3 refuses or is unreachable."""
        for key in self.keys_for(keyset, default):
            try:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    CacheControl=cache_control,
                    Metadata={"keysvc-etag": etag.strip('"')},
                )
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
                raise BackendUnavailable(f"S3 PutObject to the JWKS mirror failed: {code}") from exc
            except BotoCoreError as exc:
                reason = type(exc).__name__
                raise BackendUnavailable(f"S3 PutObject to the JWKS mirror failed: {reason}") from exc

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()
