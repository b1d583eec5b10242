"""The operator extra link to a job's page on its service."""
