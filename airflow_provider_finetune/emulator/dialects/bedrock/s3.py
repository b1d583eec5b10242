"""S3 as the Bedrock dialect uses it: read a job's training and validation data, write its output metrics.

It goes through botocore (an optional dependency, imported when first used) to the S3 endpoint the
emulator was given (moto's server in the tests), with the emulator's AWS credentials. The calls block:
the dialect runs them in a worker thread, away from the event loop.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from airflow_provider_finetune.emulator.config import BedrockConfig

__all__ = ["S3Error", "S3Storage", "split_s3_uri"]

_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)(?:/(?P<key>.*))?$")


class S3Error(Exception):
    """S3 could not be read or written; its message says what and why (no secret in it)."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into its bucket and key (the key may be empty)."""
    match = _S3_URI.match(uri)
    if match is None:
        raise ValueError(f"not an S3 URI: {uri!r}")
    return match["bucket"], match["key"] or ""


class S3Storage:
    """Objects in S3, read and written with botocore.

    :param config: the endpoint, region and credentials.
    """

    def __init__(self, config: BedrockConfig) -> None:
        self._config = config
        self._client: Any = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Make the S3 client now (in the event loop's thread: botocore's session is not shared across threads)."""
        self._s3()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import botocore.config

                from airflow_provider_finetune.emulator.dialects.bedrock.shapes import botocore_session

                self._client = botocore_session().create_client(
                    "s3",
                    region_name=self._config.region,
                    endpoint_url=self._config.s3_endpoint_url,
                    aws_access_key_id=self._config.access_key_id,
                    aws_secret_access_key=self._config.secret_access_key,
                    config=botocore.config.Config(
                        s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30
                    ),
                )
            return self._client

    def read(self, uri: str) -> bytes:
        """The bytes of the object at ``uri``.

        :raises S3Error: when it does not exist or cannot be read.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        if not key or key.endswith("/"):
            raise S3Error(f"{uri} is a prefix, not an object")
        try:
            answer = self._s3().get_object(Bucket=bucket, Key=key)
            return bytes(answer["Body"].read())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise S3Error(f"the object {uri} does not exist") from None
            raise S3Error(f"the object {uri} could not be read ({code or 'error'})") from None
        except BotoCoreError as exc:
            raise S3Error(f"the object {uri} could not be read ({type(exc).__name__})") from None

    def write(self, uri: str, data: bytes, content_type: str = "text/csv") -> None:
        """Write ``data`` to the object at ``uri``.

        :raises S3Error: when it cannot be written.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        try:
            self._s3().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(f"the object {uri} could not be written ({type(exc).__name__})") from None
