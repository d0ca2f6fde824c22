"""The node agent as a process: real processes, the API socket and signals around a
``NodeAgent``. Signal handlers only record the signal: the main coroutine then stops the
engine (stop signal, SIGKILL after ``stopwaitsecs``), quits the MPS daemon it started and
deregisters, then stops the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator, Mapping

import httpx
import uvicorn

from node_agents.agent import NodeAgent, visible_gpus
from node_agents.api import create_app
from node_agents.config import NodeConfig
from node_agents.mps import MpsDaemon, MpsError
from node_agents.spawner import ProcessSpawner
from pdwire.httpserver import header_timeout_protocol

log = logging.getLogger(__name__)


class AgentServer(uvicorn.Server):
    """uvicorn without its signal handlers: the agent's own handlers decide what a signal
    does (stop the engine first, then the API)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """Bind the API socket before anything starts, so a taken port fails the start."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"api.port = {port}: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    sock.listen(128)
    return sock


async def serve(config: NodeConfig, env: Mapping[str, str]) -> int:
    """Run the agent until SIGTERM or SIGINT; the process exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        sock = listen(config.api.host, config.api_port)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    logs = config.logs
    spawner = ProcessSpawner(logs.dir, logs.max_bytes, logs.backups, env)
    async with httpx.AsyncClient() as client:
        agent = NodeAgent(
            config,
            spawner=spawner,
            clock=time.monotonic,
            client=client,
            mps=MpsDaemon(env) if config.mps_enabled else None,
            gpus=visible_gpus(),
            env=env,
            stderr_tail=spawner.stderr_tail,
        )
        try:
            await agent.start()
        except MpsError as exc:
            log.error("%s", exc)
            sock.close()
            return 1
        server = AgentServer(
            uvicorn.Config(
                create_app(agent, config.api.token),
                http=header_timeout_protocol(),
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        api = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        log.info("agent API on http://%s:%d", config.api.host, config.api_port)
        await stop.wait()
        log.info("stopping: engine first, then the API")
        await agent.shutdown()
        server.should_exit = True
        await api
    return 0
