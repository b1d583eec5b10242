"""Pure rules with no I/O: waiting, checkpoints, early stopping, budget, quota, once-only, unchanged data, actions.

Each is a function or a generator of steps; the hook's drivers and the triggers carry them out.
"""
