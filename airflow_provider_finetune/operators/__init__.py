"""Operators: create a job and wait for it, act on jobs, upload data, share checkpoints, run graders, evaluate."""
