"""The hook (a connection -> its service's backend -> calls, sync and async) and the drivers that need it."""
