"""Deferrable triggers: the job, checkpoint, quota and deployment waits, polled by one shared poller."""
