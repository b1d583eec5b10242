"""The dialects the emulator serves besides OpenAI's own.

Azure OpenAI, AWS Bedrock, Fireworks AI, Together AI and Google Vertex AI.

Each dialect builds its routes over the emulator's shared store, trainer, files and counters;
:mod:`airflow_provider_finetune.emulator.app` mounts them, each under its name in
:data:`~airflow_provider_finetune.emulator.app.DIALECTS`.
"""
