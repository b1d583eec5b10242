"""Authentication of the Bedrock dialect, checked offline: SigV4 recomputed by botocore, or a bearer API key.

A signed request's signature is recomputed with :class:`botocore.auth.SigV4Auth` over the request as it
arrived (method, raw path, query, the headers it lists as signed, body) and compared in constant time; the
emulator has no signer of its own. What is refused, and how AWS answers it (403 with ``x-amzn-ErrorType``):

* no ``Authorization`` header (nor a presigned query): ``MissingAuthenticationTokenException``;
* an access key id other than the configured one, or a wrong bearer key: ``UnrecognizedClientException``;
* a credential scope for another region or service, a request time more than 15 minutes away, a missing
  ``X-Amz-Date``, a body that does not hash to its ``X-Amz-Content-SHA256``, or a signature that does not
  match: ``InvalidSignatureException``.

botocore is optional: :func:`botocore_missing` says so, and the dialect answers a clear error then.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import importlib.util
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_finetune.emulator.config import BedrockConfig
from airflow_provider_finetune.emulator.dialects.bedrock.errors import AWSError

__all__ = ["SERVICE", "SignedRequest", "authenticate", "botocore_missing"]

#: The signing name of both Bedrock services (control plane and runtime).
SERVICE = "bedrock"
#: How far a request's time may be from the emulator's, as AWS allows.
MAX_SKEW_SECONDS = 15 * 60

_CREDENTIAL = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request"
    r"\s*,\s*SignedHeaders=(?P<signed>[a-z0-9;_.-]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


def botocore_missing() -> bool:
    """Whether botocore cannot be imported (the Bedrock dialect needs it)."""
    return importlib.util.find_spec("botocore") is None


def _refuse(error_type: str, message: str) -> AWSError:
    return AWSError(403, error_type, message)


@dataclass(frozen=True)
class SignedRequest:
    """A request as it arrived, all that its signature covers.

    :param method: the HTTP method.
    :param raw_path: the path exactly as sent (still percent-encoded).
    :param query: the raw query string, without ``?``.
    :param headers: the request's headers (case-insensitive mapping).
    :param body: the request's body.
    """

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


def authenticate(config: BedrockConfig, request: SignedRequest) -> None:
    """Check a Bedrock request's credentials; raise :class:`AWSError` (403) as AWS would.

    :param config: the credentials, API key and region the emulator was started with.
    :param request: the request.
    """
    headers = request.headers
    authorization = headers.get("authorization", "").strip()
    if not authorization:
        raise _refuse("MissingAuthenticationTokenException", "Missing Authentication Token")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        _check_bearer(config, value.strip())
        return
    match = _CREDENTIAL.match(authorization)
    if match is None:
        raise _refuse(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
            "(AWS4-HMAC-SHA256).",
        )
    if not hmac.compare_digest(match["key"].encode(), config.access_key_id.encode()):
        raise _refuse("UnrecognizedClientException", "The security token included in the request is invalid.")
    if match["region"] != config.region:
        raise _refuse(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{match['region']}'. ",
        )
    if match["service"] != SERVICE:
        raise _refuse("InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'. ")
    stamp = headers.get("x-amz-date", "")
    _check_time(stamp, match["date"])
    expected = _signature(config, request, stamp, match["signed"].split(";"))
    if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
        raise _refuse("InvalidSignatureException", _SIGNATURE_MISMATCH)


def _check_bearer(config: BedrockConfig, key: str) -> None:
    if config.api_key is None or not key or not hmac.compare_digest(key.encode(), config.api_key.encode()):
        # The key is never echoed, not even in part.
        raise _refuse("UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined prefix")


def _check_time(stamp: str, scope_date: str) -> None:
    try:
        moment = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise _refuse(
            "IncompleteSignatureException", "Authorization header requires existence of either a 'X-Amz-Date' header."
        ) from None
    if stamp[:8] != scope_date:
        raise _refuse("InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from ISO-8601.")
    # The signer's clock is the real one, whatever clock the simulated jobs run on.
    now = time.time()
    if abs(now - moment) > MAX_SKEW_SECONDS:
        raise _refuse(
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier or later than the allowed 15 minutes "
            f"({time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}).",
        )


def _signature(config: BedrockConfig, sent: SignedRequest, stamp: str, signed: list[str]) -> str:
    """The signature botocore's SigV4 signer gives the request, over the headers the client signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers, body = sent.headers, sent.body
    if "host" not in signed:
        raise _refuse("InvalidSignatureException", "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    chosen: dict[str, Any] = {}
    for name in signed:
        if name not in headers:
            raise _refuse("InvalidSignatureException", _SIGNATURE_MISMATCH)
        chosen[name] = headers[name]
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != "UNSIGNED-PAYLOAD" and declared != hashlib.sha256(body).hexdigest():
        raise _refuse("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match.")
    url = f"http://{headers.get('host', '')}{sent.raw_path}" + (f"?{sent.query}" if sent.query else "")
    request = AWSRequest(method=sent.method, url=url, headers=chosen, data=body)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(config.access_key_id, config.secret_access_key), SERVICE, config.region)
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))
