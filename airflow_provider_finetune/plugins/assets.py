"""What the plugin's registration and its app share: where the app is mounted, and the page's icon."""

from __future__ import annotations

import base64
from importlib import resources

__all__ = ["ICON", "URL_PREFIX"]

#: Where the api-server mounts the app.
URL_PREFIX = "/finetune"
#: The page's icon (static/icon.svg) as a ``data:`` URI.
ICON = "data:image/svg+xml;base64," + base64.b64encode(
    (resources.files("airflow_provider_finetune.plugins") / "static" / "icon.svg").read_bytes()
).decode("ascii")
