"""The control socket: ``callguardctl`` asks the running daemon for live state.

One JSON request per line, ``{"command": "status"}``, one JSON reply per
line. The socket is a Unix socket with mode 0660, so only the daemon's user
and group can use it.
"""

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0
# Seconds that a client waits for the connection, and again for the reply.
ASK_TIMEOUT = 5.0
SOCKET_MODE = 0o660

Command = Callable[[dict], Awaitable[dict] | dict]


class ControlServer:
    def __init__(self, path: Path, commands: dict[str, Command]):
        self.path = Path(path)
        self._commands = commands
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise OSError(f"control socket directory {self.path.parent} is not a "
                          "directory; set control_socket in [general] to a path in a "
                          "directory")
        if not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(mode=0o750, parents=True)
            except OSError as exc:
                raise OSError(f"control socket directory {self.path.parent} does not exist "
                              f"and cannot be created ({exc.strerror}); create it or set "
                              "control_socket in [general]") from None
        if self.path.is_socket():
            if await _answers(self.path):
                raise ControlSocketInUse(
                    f"another callguard daemon is running with the control socket "
                    f"{self.path}; stop it first, or give this one its own "
                    "control_socket in [general]"
                )
            self.path.unlink()  # left behind by a daemon that did not stop cleanly
        old_umask = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        self._inode = self.path.stat().st_ino
        log.info("control socket at %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Only our own socket: a newer daemon may have taken the path since.
        try:
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            reply = await self._answer(line)
        except (asyncio.LimitOverrunError, ValueError):
            reply = {"error": f"request longer than {MAX_REQUEST} bytes"}
        except TimeoutError:
            reply = {"error": "no request received in time"}
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            # json raises RecursionError for nesting deeper than the recursion limit.
            return {"error": "invalid request: send one JSON object per line"}
        if not isinstance(request, dict):
            return {"error": "invalid request: send one JSON object per line"}
        name = request.get("command")
        # A list or object as the name cannot be a dict key.
        command = self._commands.get(name) if isinstance(name, str) else None
        if command is None:
            return {"error": f"unknown command {name!r}; use one of "
                             f"{', '.join(sorted(self._commands))}"}
        try:
            reply = command(request)
            if asyncio.iscoroutine(reply):
                reply = await reply
            return reply
        except InvalidRequest as exc:
            # An error in the request, not in the daemon: the log gets one line
            # without a traceback.
            log.warning("control command %s rejected: %s", name, exc)
            return {"error": f"invalid request: {exc}"}
        except Exception as exc:
            log.exception("control command %s failed", request.get("command"))
            return {"error": f"command failed: {exc}"}


class InvalidRequest(ValueError):
    """A control request whose fields are missing, of the wrong type or invalid."""


class ControlSocketInUse(OSError):
    """Another daemon accepts connections on the control socket's path."""


async def _answers(path: Path) -> bool:
    """Tell whether a process accepts connections on the Unix socket at ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def ask(path: Path, request: dict, timeout: float = ASK_TIMEOUT) -> dict:
    """Send one request to the daemon's control socket and return its reply."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=32 << 20), timeout
    )
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return json.loads(line)
