"""The node agent: MPS, the supervised engine, its health, its registration, its API.

``NodeAgent`` owns no process state itself (``EngineProcess`` does) and does no waiting in
its request methods; ``node_agents.serve`` wires it to real processes, sockets and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from node_agents.config import NodeConfig
from node_agents.drain import Drainer, MasterDirectory
from node_agents.group import GroupMember
from node_agents.health import HealthProber, health_url
from node_agents.lightllm_cmd import engine_command
from node_agents.mps import MpsDaemon, MpsError
from node_agents.process import LIVE, SETTLED, EngineProcess, State, Transition
from node_agents.registration import Registrar
from node_agents.spawner import Child, Spawner

log = logging.getLogger(__name__)

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def visible_gpus(root: Path = NVIDIA_GPUS) -> list[str]:
    """PCI addresses of the NVIDIA GPUs the driver shows (none without a driver)."""
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


class NodeAgent:
    def __init__(
        self,
        config: NodeConfig,
        *,
        spawner: Spawner,
        clock: Callable[[], float],
        client: httpx.AsyncClient,
        mps: MpsDaemon | None,
        gpus: list[str],
        env: Mapping[str, str],
        tick_s: float = 0.1,
        stderr_tail: Callable[[Child | None], list[str]] = lambda child: [],
    ) -> None:
        self.config = config
        self._stderr_tail = stderr_tail
        self.last_stderr: list[str] = []  # the engine's last stderr lines when it last ended
        self.command = engine_command(config)
        self.process = EngineProcess(
            self.command, config.restart, spawner, clock, self._on_transition
        )
        self.prober = HealthProber(
            client,
            health_url(config.host, config.port, config.health.path),
            config.health,
            self.process,
            clock,
        )
        reg = config.registration
        self.registrar = (
            Registrar(
                client,
                config.config_server,
                config.node_id,
                reg.ttl_s,
                self.registration_body,
                reg.token,
                clock,
            )
            if config.config_server
            else None
        )
        masters = MasterDirectory(client, config.pd_master, config.config_server)
        self.drainer = Drainer(
            client,
            masters,
            config.engine_address,
            config.role,
            reg.master_admin_token,
            reg.drain_timeout_s,
            clock,
            # nodes that find their masters through the config server drain through it
            mark_directly=self.registrar is None or config.pd_master is not None,
        )
        self.group = (
            GroupMember(
                client,
                config.config_server,
                config.group_id,
                config.node_rank,
                config.nnodes,
                self.process,
                self,
                poll_s=config.group.poll_s,
                ttl_s=config.group.ttl_s,
                token=reg.token,
                health_restarts=lambda: self.prober.restarts_requested,
            )
            if config.multinode and config.config_server
            else None
        )
        self.mps = mps
        self._gpus = gpus
        self._cuda_visible = {**env, **config.env}.get("CUDA_VISIBLE_DEVICES")
        self._tick_s = tick_s
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._marked = asyncio.Event()
        self._stop_when_drained = False

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """MPS first (raises MpsError), then the engine and the loops that watch it."""
        if self.mps is not None:
            await asyncio.to_thread(self.mps.start)
        if self.group is not None:  # start at the group's generation, not a stale one
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    while (record := await self.group.join()) is None:
                        await asyncio.sleep(0.5)
                    self.group.generation = int(record["generation"])
        self.process.start("agent started")
        self._tasks = [
            asyncio.create_task(self._supervise(), name="supervise"),
            asyncio.create_task(self.prober.run(), name="health"),
        ]
        if self.registrar is not None:
            self._tasks.append(asyncio.create_task(self.registrar.run(), name="register"))
        if self.group is not None:
            self._tasks.append(asyncio.create_task(self.group.run(), name="group"))

    async def _supervise(self) -> None:
        while True:
            self.process.tick()
            await asyncio.sleep(self._tick_s)

    async def shutdown(self) -> None:
        self._end_drain()
        self.process.stop("agent shutting down")
        deadline = time.monotonic() + self.config.restart.stopwaitsecs + 5.0
        while self.process.state not in SETTLED and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.process.state not in SETTLED:
            log.error("engine still %s after the SIGKILL; giving up on it", self.process.state)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5.0)
            if stuck:  # the agent still exits; its engine is already stopped
                log.error("tasks ignored cancellation: %s", [t.get_name() for t in stuck])
        if self.group is not None:
            await self.group.close()
        if self.mps is not None:
            try:
                await asyncio.to_thread(self.mps.stop)
            except MpsError as exc:
                log.error("%s", exc)
        if self.registrar is not None:
            await self.registrar.register()  # the last state (STOPPED) for anyone watching
            await self.registrar.deregister()

    def _on_transition(self, transition: Transition) -> None:
        if transition.new in (State.EXITED, State.BACKOFF) and transition.old in LIVE:
            self.last_stderr = self._stderr_tail(self.process.child)
            if self.last_stderr:
                log.warning(
                    "engine ended (%s); last lines of its stderr (%s):\n  %s",
                    transition.reason,
                    self.config.logs.dir / "engine.stderr.log",
                    "\n  ".join(self.last_stderr),
                )
        if transition.new is State.FATAL:
            cause = self.last_stderr[-1] if self.last_stderr else "no output on stderr"
            log.error("engine FATAL: %s; cause: %s", transition.reason, cause)
        if self.registrar is not None:
            self.registrar.changed()
        if self.group is not None:
            self.group.on_transition(transition)

    # --- requests (the HTTP API) ----------------------------------------------------------

    async def drain(self, stop: bool) -> dict[str, Any]:
        """Answers once every master has been asked to stop selecting the node; a rank of a
        multi-node instance drains every rank (through the group record)."""
        if self.group is not None:
            self.group.request_drain(stop)
        return await self.drain_for_group(stop)

    async def drain_for_group(self, stop: bool) -> dict[str, Any]:
        self._stop_when_drained = self._stop_when_drained or stop
        if self._drain_task is None:
            self._marked = asyncio.Event()
            run = self.drainer.run(self._drained, self._marked)
            self._drain_task = asyncio.create_task(run, name="drain")
            if self.registrar is not None:
                self.registrar.changed()
        elif stop and self.drainer.status in ("drained", "timed_out"):
            self.process.stop("drained")
        with contextlib.suppress(TimeoutError):  # each master call has its own 5 s deadline
            async with asyncio.timeout(15.0):  # not wait_for: it can lose a cancel on 3.11
                await self._marked.wait()
        return {"drain": self.drainer.snapshot(), "stop_when_drained": self._stop_when_drained}

    async def undrain(self) -> dict[str, Any]:
        """Masters select the node again: the registration turns back to RUNNING, and a
        master the agent marked directly is told to undrain it; a rank of a multi-node
        instance undrains every rank."""
        if self.group is not None:
            self.group.request_undrain()
        return await self.undrain_for_group()

    async def undrain_for_group(self) -> dict[str, Any]:
        was = self.drainer.status
        self._end_drain()
        if self.registrar is not None:
            self.registrar.changed()
        masters = await self.drainer.unmark()
        return {"was": was, "drain": self.drainer.snapshot(), "masters": masters}

    def _drained(self) -> None:
        if self.registrar is not None:
            self.registrar.changed()
        if self._stop_when_drained:
            self.process.stop("drained")

    def _end_drain(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            self._drain_task = None
        self._stop_when_drained = False
        self.drainer.reset()

    def restart(self) -> dict[str, Any]:
        self._end_drain()
        self.process.restart("restart requested over the API")
        if self.group is not None:  # every rank restarts with this one
            self.group.request_restart("restart requested over the API")
        return {"engine": self.process.snapshot()}

    def restart_engine(self, reason: str) -> None:
        self._end_drain()
        self.process.restart(reason)

    def stop_engine_for_group(self, reason: str) -> None:
        self._end_drain()
        self.process.stop(reason)
        if self.registrar is not None:
            self.registrar.changed()

    def stop_engine(self) -> dict[str, Any]:
        self.process.stop("stop requested over the API")
        return {"engine": self.process.snapshot()}

    # --- what it reports ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The engine's state, or DRAINING/DRAINED while a running engine is drained."""
        if self.process.state is State.RUNNING and self.drainer.status != "idle":
            return "DRAINED" if self.drainer.status == "drained" else "DRAINING"
        if self.group is not None and self.group.fatal and self.process.state in SETTLED:
            return State.FATAL.value  # stopped because another rank gave up
        return self.process.state.value

    def registration_body(self) -> dict[str, Any]:
        c = self.config
        return {
            "address": c.engine_address,
            "role": c.role,
            "state": self.state,
            "info": {
                "engine": c.engine,
                "lightllm_version": c.lightllm_version,
                "engine_state": self.process.state.value,
                "pid": self.process.pid,
                "agent_pid": os.getpid(),
                "restarts": self.process.restarts,
                "gpus": self._gpus,
                "cuda_visible_devices": self._cuda_visible,
                "tp": c.tp,
                "dp": c.dp,
                "ports": {"http": c.port, "nccl": c.nccl_port, "agent": c.api_port},
                "agent_address": f"{c.api.host}:{c.api_port}",
                "drain": self.drainer.status,
                "last_exit": self.process.exit_report(),
                **({"group": self.group.brief()} if self.group is not None else {}),
            },
        }

    def status(self) -> dict[str, Any]:
        c = self.config
        return {
            "node_id": c.node_id,
            "role": c.role,
            "engine_kind": c.engine,
            "address": c.engine_address,
            "state": self.state,
            "engine": {**self.process.snapshot(), "last_stderr": self.last_stderr},
            "health": self.prober.snapshot(),
            "registration": self.registrar.snapshot() if self.registrar else None,
            "drain": self.drainer.snapshot(),
            "mps": {
                "enabled": self.mps is not None,
                "started_by_us": bool(self.mps and self.mps.started_by_us),
            },
            "gpus": self._gpus,
            "group": self.group.snapshot() if self.group is not None else None,
            "command": {"argv": self.command.argv, "env": self.command.env},
        }
