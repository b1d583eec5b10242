"""Sensors that wait on a job's status and on its checkpoints, on the worker or deferred."""
