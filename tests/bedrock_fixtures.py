"""Shared pytest fixtures for everything that talks to the emulator's AWS Bedrock dialect.

Use them from a ``conftest.py`` (or a test module)::

    from tests.bedrock_fixtures import bedrock, make_bedrock, moto_s3  # noqa: F401  (pytest fixtures)

The API, kept small:

* ``moto_s3`` (session scope): the endpoint URL of a moto S3 server (``ThreadedMotoServer``) on loopback.
* ``make_bedrock(**overrides)`` (function scope): starts an emulator whose Bedrock dialect reads S3 from
  ``moto_s3`` and checks the credentials below; keyword arguments go to ``EmulatorConfig`` (``clock=``,
  ``speed=``, ``faults=``...), and ``bedrock={...}`` to its ``BedrockConfig`` (``api_key=``...). Returns
  a :class:`BedrockEmulator`; every emulator is stopped at the end of the test.
* ``bedrock``: ``make_bedrock()`` with the defaults: the real clock at speed :data:`FAST_SPEED`, so that a
  small job completes in about a tenth of a second and a deployment is active in a few tens of ms.

A :class:`BedrockEmulator` gives what a client needs: ``control_url`` and ``runtime_url`` (the
``endpoint_url`` of boto3's ``bedrock`` and ``bedrock-runtime`` clients), ``region``, ``access_key_id``,
``secret_access_key``, ``api_key`` (a Bedrock API key for ``Authorization: Bearer``), ``role_arn`` (a role
ARN a create request can name), ``bucket`` (an S3 bucket of its own, already made), and helpers:
``client(service)`` (a boto3 client with those credentials and no retries), ``put_jsonl(key, records)``
(writes JSONL to the bucket, returns its ``s3://`` URI), ``read_s3(uri)``, ``job_body(...)`` (a valid
``CreateModelCustomizationJob`` request), ``server`` (the :class:`EmulatorServer`, for its counters).

Every answer a ``bedrock`` or ``bedrock-runtime`` client of ``client()`` receives is checked against
botocore's service model (the operation's output shape; for an error, ``x-amzn-ErrorType`` and a
``message``); ``checked`` lists the operations whose answers passed.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator.config import BedrockConfig

__all__ = [
    "ACCESS_KEY_ID",
    "API_KEY",
    "FAST_SPEED",
    "REGION",
    "ROLE_ARN",
    "SECRET_ACCESS_KEY",
    "BedrockEmulator",
    "bedrock",
    "conversation_records",
    "make_bedrock",
    "moto_s3",
]

ACCESS_KEY_ID = "AKIAEMULATORTEST0001"
SECRET_ACCESS_KEY = "emulator-test-secret-5ecret"
API_KEY = "ABSKemulator-test-bedrock-api-key"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/BedrockFineTuning"
#: The speed of ``bedrock``: a small job takes about 0.1 s of wall clock.
FAST_SPEED = 600.0

_buckets = itertools.count(1)


@functools.cache
def _session() -> Any:
    """One boto3 session for every test client: the service models are read once."""
    import boto3

    return boto3.session.Session()


def conversation_records(count: int = 8, *, start: int = 0) -> list[dict[str, Any]]:
    """Training records in Bedrock's conversation format (Nova): ``What is i + i?`` -> ``2i``."""
    return [
        {
            "schemaVersion": "bedrock-conversation-2024",
            "system": [{"text": "You add numbers."}],
            "messages": [
                {"role": "user", "content": [{"text": f"What is {i} + {i}?"}]},
                {"role": "assistant", "content": [{"text": f"{2 * i}"}]},
            ],
        }
        for i in range(start, start + count)
    ]


@dataclass
class BedrockEmulator:
    """An emulator serving the Bedrock dialect, with the credentials and S3 bucket its clients use."""

    server: EmulatorServer
    s3_endpoint_url: str
    bucket: str
    region: str = REGION
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = field(default=SECRET_ACCESS_KEY, repr=False)
    api_key: str | None = field(default=API_KEY, repr=False)
    role_arn: str = ROLE_ARN
    checked: list[str] = field(default_factory=list)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def control_url(self) -> str:
        """``endpoint_url`` of the ``bedrock`` (control plane) client."""
        return self.server.url + "/bedrock"

    @property
    def runtime_url(self) -> str:
        """``endpoint_url`` of the ``bedrock-runtime`` client."""
        return self.server.url + "/bedrock-runtime"

    def client(self, service: str = "bedrock", *, secret: str | None = None, **config: Any) -> Any:
        """A boto3 client of ``bedrock``, ``bedrock-runtime`` or ``s3``, without retries unless ``config`` says
        (made once per set of arguments).

        :param secret: a secret access key other than the emulator's (to be refused).
        :param config: settings of ``botocore.config.Config``.
        """
        key = f"{service}|{secret}|{sorted(config.items())!r}"
        if key not in self._clients:
            self._clients[key] = self._new_client(service, secret, **config)
        return self._clients[key]

    def _new_client(self, service: str, secret: str | None, **config: Any) -> Any:
        from botocore.config import Config

        endpoints = {"bedrock": self.control_url, "bedrock-runtime": self.runtime_url, "s3": self.s3_endpoint_url}
        config.setdefault("retries", {"total_max_attempts": 1})
        if service == "s3":
            config.setdefault("s3", {"addressing_style": "path"})
        client = _session().client(
            service,
            region_name=self.region,
            endpoint_url=endpoints[service],
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
            config=Config(**config),
        )
        if service != "s3":
            client.meta.events.register(f"response-received.{service}", functools.partial(self._conform, service))
        return client

    def _conform(self, service: str, response_dict: Any, **_: Any) -> None:
        """Check an answer of the dialect against botocore's service model: its output shape, or an AWS error."""
        from airflow_provider_finetune.emulator.dialects.bedrock.shapes import check_output

        if response_dict is None:  # the connection was lost: nothing to check
            return
        headers = {name.lower(): value for name, value in response_dict["headers"].items()}
        body = json.loads(response_dict.get("body") or b"{}")
        assert headers.get("x-amzn-requestid"), "every answer carries x-amzn-RequestId"
        if response_dict["status_code"] >= 300:
            assert headers.get("x-amzn-errortype"), f"an error without x-amzn-ErrorType: {body}"
            assert isinstance(body.get("message"), str), body
            return
        operation = response_dict["context"]["operation_name"]
        check_output(service, operation, body)
        self.checked.append(operation)

    def put_jsonl(self, key: str, records: list[Any]) -> str:
        """Write records (objects, or raw strings as lines) as JSONL to the bucket; return the ``s3://`` URI."""
        lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
        self.client("s3").put_object(Bucket=self.bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        return f"s3://{self.bucket}/{key}"

    def read_s3(self, uri: str) -> bytes:
        """The bytes of an object of the bucket, by ``s3://`` URI."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bytes(self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())

    def job_body(self, name: str, training_uri: str, **overrides: Any) -> dict[str, Any]:
        """A valid ``CreateModelCustomizationJob`` request (Nova Micro fine-tuning), with ``overrides``."""
        body: dict[str, Any] = {
            "jobName": name,
            "customModelName": f"{name}-model",
            "roleArn": self.role_arn,
            "baseModelIdentifier": "amazon.nova-micro-v1:0:128k",
            "customizationType": "FINE_TUNING",
            "trainingDataConfig": {"s3Uri": training_uri},
            "outputDataConfig": {"s3Uri": f"s3://{self.bucket}/output/"},
            "hyperParameters": {"epochCount": "2"},
        }
        body.update(overrides)
        return body


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on loopback, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def make_bedrock(moto_s3: str) -> Iterator[Callable[..., BedrockEmulator]]:
    """Start emulators with the Bedrock dialect (stopped at the end of the test)."""
    started: list[EmulatorServer] = []

    def make(*, bedrock: dict[str, Any] | None = None, **overrides: Any) -> BedrockEmulator:
        settings: dict[str, Any] = {
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "api_key": API_KEY,
            "region": REGION,
            "s3_endpoint_url": moto_s3,
            **(bedrock or {}),
        }
        config: dict[str, Any] = {"speed": FAST_SPEED, "seed": 11, "bedrock": BedrockConfig(**settings)}
        config.update(overrides)
        server = EmulatorServer(EmulatorConfig(**config)).start()
        started.append(server)
        handle = BedrockEmulator(
            server,
            moto_s3,
            bucket=f"bedrock-test-{next(_buckets)}-{server.port}",
            region=settings["region"],
            access_key_id=settings["access_key_id"],
            secret_access_key=settings["secret_access_key"],
            api_key=settings["api_key"],
        )
        handle.client("s3").create_bucket(Bucket=handle.bucket)
        return handle

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def bedrock(make_bedrock: Callable[..., BedrockEmulator]) -> BedrockEmulator:
    """An emulator with the Bedrock dialect, on the real clock at :data:`FAST_SPEED`."""
    return make_bedrock()
