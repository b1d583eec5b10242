"""Run the emulator in the background of a test or a demo: uvicorn in a thread, on a free port.

>>> with EmulatorServer(EmulatorConfig(speed=50)) as server:  # doctest: +SKIP
...     client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key)
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from airflow_provider_finetune.emulator.app import EmulatorApp, create_app
from airflow_provider_finetune.emulator.config import EmulatorConfig
from airflow_provider_finetune.emulator.core import Emulator

__all__ = ["EmulatorServer"]


class EmulatorServer:
    """The emulator served by uvicorn in a background thread.

    :meth:`start` returns once the server accepts connections; :meth:`stop` shuts it down gracefully
    (open connections get a few seconds) and closes the store. Also a context manager.

    :param config: the emulator's settings; the defaults when ``None``.
    :param host: the address to listen on (loopback by default).
    :param port: the port; ``0`` picks a free one, see :attr:`port`.
    :param startup_timeout: seconds to wait for the server to be ready.
    :param loop: uvicorn's event loop (``auto`` uses uvloop when installed).
    :param http: uvicorn's HTTP implementation (``auto`` uses httptools when installed).
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        loop: str = "auto",
        http: str = "auto",
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._loop = loop
        self._http = http
        self._port: int | None = None
        self._app: EmulatorApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        """Start serving and wait until the server is ready.

        :raises RuntimeError: if it is already running, or did not start in time.
        """
        if self._thread is not None:
            raise RuntimeError("the emulator server is already running")
        self._app = create_app(self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self._port = sock.getsockname()[1]
        server_config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop=self._loop,
            http=self._http,
            ws="none",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(server_config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"finetune-emulator-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the emulator server failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator server did not start within {self._startup_timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the server thread to end; a no-op when not running."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._app is not None:
            # The lifespan closes the store on a clean shutdown; closing twice is harmless.
            self._app.emulator.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- where -------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the emulator server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:51234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:51234/v1``: give it to a client."""
        return self.url + "/v1"

    @property
    def api_key(self) -> str:
        """The key clients send (any key works when the config has none)."""
        return self.config.api_key or "sk-emulator"

    @property
    def emulator(self) -> Emulator:
        """The emulator's state (counters, jobs, files), for tests."""
        if self._app is None:
            raise RuntimeError("the emulator server has not been started")
        return self._app.emulator

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"EmulatorServer({where})"
