"""``finetune-emulator``: serve the local fine-tuning API emulator (``python -m airflow_provider_finetune.emulator``).

Examples::

    finetune-emulator --port 8089                          # the demo: a small job takes about a minute
    finetune-emulator --port 8089 --speed 50 --db emu.db   # fast, and kept across restarts
    finetune-emulator --error-rate 0.1 --rate-limit-rate 0.05 --fault-seed 7   # a fault drill

The API key comes from ``--api-key`` or the ``FINETUNE_EMULATOR_API_KEY`` environment variable
(default ``sk-emulator``); it is never printed.

The AWS Bedrock dialect (``<root>/bedrock`` and ``<root>/bedrock-runtime``) checks SigV4 signatures made with
``--aws-access-key-id`` and ``--aws-secret-access-key`` (or ``FINETUNE_EMULATOR_AWS_ACCESS_KEY_ID`` and
``FINETUNE_EMULATOR_AWS_SECRET_ACCESS_KEY``), accepts ``--bedrock-api-key``
(``FINETUNE_EMULATOR_BEDROCK_API_KEY``) as ``Authorization: Bearer``, and reads training data from
``--s3-endpoint-url`` (``FINETUNE_EMULATOR_S3_ENDPOINT_URL``)::

    finetune-emulator --speed 50 --aws-region us-east-1 --s3-endpoint-url http://127.0.0.1:5000

The Google Vertex AI dialect (``<root>/vertex``) takes the API key as ``Authorization: Bearer`` and reads training
data from the Cloud Storage emulator at ``--gcs-endpoint`` (default: ``STORAGE_EMULATOR_HOST``, as Google's storage
clients)::

    gcp-storage-emulator start --port 9023 --in-memory --default-bucket tuning-data &
    finetune-emulator --speed 50 --gcs-endpoint http://127.0.0.1:9023

The emulator imports no Airflow: it starts in well under a second, and runs where Airflow is not installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

import uvicorn

from airflow_provider_finetune.emulator.app import create_app
from airflow_provider_finetune.emulator.config import BedrockConfig, EmulatorConfig, FaultConfig, Timings

__all__ = ["build_parser", "config_from_args", "main"]

API_KEY_ENV = "FINETUNE_EMULATOR_API_KEY"
ADMIN_KEY_ENV = "FINETUNE_EMULATOR_ADMIN_KEY"
AWS_ACCESS_KEY_ID_ENV = "FINETUNE_EMULATOR_AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY_ENV = "FINETUNE_EMULATOR_AWS_SECRET_ACCESS_KEY"
BEDROCK_API_KEY_ENV = "FINETUNE_EMULATOR_BEDROCK_API_KEY"
S3_ENDPOINT_URL_ENV = "FINETUNE_EMULATOR_S3_ENDPOINT_URL"
_BEDROCK = BedrockConfig()
_TIMINGS = Timings()

EPILOG = f"""\
admin endpoints (beside the API under /v1; health needs no key, the others take the API key (--api-key)
or the admin key, as 'Authorization: Bearer <key>' or 'api-key: <key>'):
  GET  /_emulator/health     readiness: {{"status": "ok"}}
  GET  /_emulator/counters   requests by route, answers by status, jobs and files created, faults injected
  POST /_emulator/reset      set the counters back to zero
  GET  /_emulator/faults     the fault settings
  POST /_emulator/faults     change them (the draws restart from the seed) with a JSON object of
                             {", ".join(f.name for f in fields(FaultConfig))}

simulated time: a job validates ({_TIMINGS.validating:g} s), queues ({_TIMINGS.queued:g} s), then trains \
{_TIMINGS.step:g} s per step,
at least {_TIMINGS.min_running:g} s and at most {_TIMINGS.max_running:g} s (--max-training-seconds) whatever the \
data size: a large
training file trains faster per step, not longer. Every duration is divided by --speed.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``finetune-emulator``."""
    parser = argparse.ArgumentParser(
        prog="finetune-emulator",
        description="Serve a local emulator of every fine-tuning service the provider speaks (files, jobs, graders).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="port to listen on (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated time per second (default: %(default)s)")
    parser.add_argument(
        "--max-training-seconds",
        type=float,
        default=_TIMINGS.max_running,
        metavar="SECONDS",
        help="cap on a job's training time whatever the data size, in simulated seconds (default: %(default)g)",
    )
    parser.add_argument("--db", metavar="PATH", help="SQLite file that keeps state across restarts")
    parser.add_argument("--seed", type=int, default=0, help="seed of ids, metrics and answers (default: %(default)s)")
    parser.add_argument("--api-key", help=f"the key clients must send (default: ${API_KEY_ENV} or sk-emulator)")
    parser.add_argument(
        "--admin-key", help=f"the key checkpoint permissions need (default: ${ADMIN_KEY_ENV}, or the API key)"
    )
    parser.add_argument("--organization", default="org-emulator", help="organization id (default: %(default)s)")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--ignore-metadata-filter",
        action="store_true",
        help="list every job whatever the metadata[...] filter of GET /v1/fine_tuning/jobs (as some gateways do)",
    )
    aws = parser.add_argument_group("AWS Bedrock dialect (<root>/bedrock, <root>/bedrock-runtime)")
    aws.add_argument(
        "--aws-access-key-id",
        help=f"access key id of signed requests (default: ${AWS_ACCESS_KEY_ID_ENV} or {_BEDROCK.access_key_id})",
    )
    aws.add_argument(
        "--aws-secret-access-key",
        help=f"its secret (default: ${AWS_SECRET_ACCESS_KEY_ENV}, or the emulator's own); never printed",
    )
    aws.add_argument(
        "--bedrock-api-key",
        help=f"a Bedrock API key accepted as 'Authorization: Bearer' (default: ${BEDROCK_API_KEY_ENV}, or none)",
    )
    aws.add_argument(
        "--aws-region", default=_BEDROCK.region, help="region signatures are scoped to (default: %(default)s)"
    )
    aws.add_argument("--aws-account-id", default=_BEDROCK.account_id, help="account in ARNs (default: %(default)s)")
    aws.add_argument(
        "--s3-endpoint-url",
        help=f"S3 endpoint training data is read from and metrics written to (default: ${S3_ENDPOINT_URL_ENV}, or AWS)",
    )
    aws.add_argument(
        "--deployment-seconds",
        type=float,
        default=_BEDROCK.deployment_seconds,
        help="simulated seconds a custom model deployment stays Creating (default: %(default)g)",
    )
    aws.add_argument(
        "--bedrock-max-active-jobs",
        type=int,
        help="quota of customization jobs in progress at once (ServiceQuotaExceededException beyond it; default: none)",
    )
    google = parser.add_argument_group("Google Vertex AI dialect (<root>/vertex)")
    google.add_argument(
        "--gcs-endpoint",
        help="Cloud Storage JSON API training data is read from (default: $STORAGE_EMULATOR_HOST, or none)",
    )
    faults = parser.add_argument_group("fault injection (seeded, per /v1, /openai, /bedrock and /vertex request)")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (default: %(default)s)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500/502/503")
    faults.add_argument("--rate-limit-rate", type=float, default=0.0, help="share of requests answered 429")
    faults.add_argument("--retry-after", type=float, default=1.0, help="retry-after of a 429, in seconds")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of requests whose connection is dropped")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    faults.add_argument("--latency-jitter", type=float, default=0.0, help="up to this many more seconds per request")
    faults.add_argument("--fault-match", help="regex on 'METHOD /v1/path' choosing the requests that get faults")
    faults.add_argument(
        "--fault-after-processing",
        action="store_true",
        help="handle a faulted request first, then lose its answer (a retry would repeat it)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into an :class:`EmulatorConfig`."""
    faults = FaultConfig(
        seed=args.fault_seed,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        match=args.fault_match,
        after_processing=args.fault_after_processing,
    )
    cap = args.max_training_seconds
    # A cap below the shortest training time lowers that too: the cap is what the user asked for.
    timings = Timings(max_running=cap, min_running=min(_TIMINGS.min_running, max(cap, 0.0)))
    return EmulatorConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or "sk-emulator",
        admin_key=args.admin_key or os.environ.get(ADMIN_KEY_ENV) or None,
        organization=args.organization,
        speed=args.speed,
        seed=args.seed,
        db_path=args.db,
        timings=timings,
        faults=faults,
        ignore_metadata_filter=args.ignore_metadata_filter,
        bedrock=BedrockConfig(
            access_key_id=args.aws_access_key_id or os.environ.get(AWS_ACCESS_KEY_ID_ENV) or _BEDROCK.access_key_id,
            secret_access_key=(
                args.aws_secret_access_key or os.environ.get(AWS_SECRET_ACCESS_KEY_ENV) or _BEDROCK.secret_access_key
            ),
            api_key=args.bedrock_api_key or os.environ.get(BEDROCK_API_KEY_ENV) or None,
            region=args.aws_region,
            account_id=args.aws_account_id,
            s3_endpoint_url=args.s3_endpoint_url or os.environ.get(S3_ENDPOINT_URL_ENV) or None,
            deployment_seconds=args.deployment_seconds,
            max_active_jobs=args.bedrock_max_active_jobs,
        ),
        gcs_endpoint=args.gcs_endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    where = f"http://{args.host}:{args.port}/v1"
    stored = f", state in {config.db_path}" if config.db_path else ", state in memory"
    print(f"finetune-emulator: serving {where} at speed {config.speed:g}{stored}", file=sys.stderr, flush=True)
    root = f"http://{args.host}:{args.port}"
    print(
        f"finetune-emulator: AWS Bedrock at {root}/bedrock and {root}/bedrock-runtime "
        f"(region {config.bedrock.region}, access key id {config.bedrock.access_key_id})",
        file=sys.stderr,
        flush=True,
    )
    together = f"http://{args.host}:{args.port}/together/v1"
    print(f"finetune-emulator: Together AI's dialect at {together} (its SDK's base_url)", file=sys.stderr, flush=True)
    storage = config.gcs_endpoint or "none: set --gcs-endpoint or STORAGE_EMULATOR_HOST"
    print(
        f"finetune-emulator: Google Vertex AI at {root}/vertex/ (google-genai's base_url; Cloud Storage: {storage})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
