"""The core every other part stands on: the one request core (build, send, classify, retry), digests, statuses.

Nothing here imports hooks, backends, operators, triggers or a vendor's name.
"""
