"""AWS Bedrock's dialect: the control plane under ``/bedrock`` and the runtime under ``/bedrock-runtime``.

* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.dialect`: its state (jobs, custom models,
  deployments, Converse) and its routes;
* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.auth`: SigV4 signatures and API keys;
* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.shapes`: request checks from botocore's service models;
* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.jobs`: customization jobs and custom models, over
  the foundation models of :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.catalog` and the dataset
  formats of :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.data`;
* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.s3`: training data read from S3, metrics written to it;
* :mod:`~airflow_provider_finetune.emulator.dialects.bedrock.errors`: AWS's error answers.
"""

from __future__ import annotations

from airflow_provider_finetune.emulator.dialects.bedrock.dialect import BedrockDialect, bedrock_routes
from airflow_provider_finetune.emulator.dialects.bedrock.errors import is_bedrock_path

__all__ = ["BedrockDialect", "bedrock_routes", "is_bedrock_path"]
