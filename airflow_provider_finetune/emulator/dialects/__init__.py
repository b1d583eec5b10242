"""The dialects the emulator serves besides OpenAI's own: Azure OpenAI, AWS Bedrock, Fireworks AI and Together AI.

Each dialect builds its routes over the emulator's shared store, trainer, files and counters;
:mod:`airflow_provider_finetune.emulator.app` mounts them, each under its name in
:data:`~airflow_provider_finetune.emulator.app.DIALECTS`.
"""
