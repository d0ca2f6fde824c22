"""One rank of a multi-node instance: its engine restarts with the group's.

The ranks of a LightLLM multi-node instance share NCCL communicators, so one rank cannot
heal alone. The agents coordinate only through the config server's group record
(``/v1/groups/{id}``, see ``pdwire.groups``); there is no agent-to-agent connection:

- every ``poll_s`` the member joins (``PUT``, which also renews the record's lease) and
  reads the group's ``generation``;
- when its own engine fails (exits, or is restarted for failed health probes) at
  generation g it asks for g + 1; the compare-and-set makes ranks failing together bump
  once. Its own process restarts by its usual rules (backoff, FATAL), and it is then at
  the new generation;
- a member that reads a generation above its own restarts its engine at once;
- a rank that reaches FATAL marks the generation FATAL; every other rank stops its engine
  and reports FATAL too. A restart (``POST /restart`` on any rank's agent) asks for the
  next generation, so the whole group starts again;
- a drain on any rank drains every rank (``POST /v1/groups/{id}/drain``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from node_agents.process import SETTLED, EngineProcess, State, Transition
from pdwire.api import base_url
from pdwire.groups import GroupRecord

log = logging.getLogger(__name__)


class Rank(Protocol):
    """What the member asks of its agent."""

    def restart_engine(self, reason: str) -> None: ...

    def stop_engine_for_group(self, reason: str) -> None: ...

    def drain_for_group(self, stop: bool) -> Awaitable[Any]: ...

    def undrain_for_group(self) -> Awaitable[Any]: ...


class GroupMember:
    def __init__(
        self,
        client: httpx.AsyncClient,
        config_server: str,
        group_id: str,
        rank: int,
        nnodes: int,
        process: EngineProcess,
        owner: Rank,
        *,
        poll_s: float = 1.0,
        ttl_s: float = 30.0,
        token: str | None = None,
        health_restarts: Callable[[], int] = lambda: 0,
        timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self.url = f"{base_url(config_server)}/v1/groups/{group_id}"
        self.group_id, self.rank, self.nnodes = group_id, rank, nnodes
        self._process = process
        self._owner = owner
        self._poll_s = poll_s
        self._ttl_s = ttl_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._health_restarts = health_restarts
        self._seen_health_restarts = 0
        self._timeout_s = timeout_s
        self.generation = 0  # the generation this rank's engine runs at
        self.record: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._joined = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports: set[asyncio.Task[None]] = set()  # our own failures, not yet answered
        self._pending: tuple[str, str] | None = None  # a failure to tell at the tick's end
        self._drained_at: float | None = None
        self._wake = asyncio.Event()

    # --- the agent tells us -----------------------------------------------------------------

    def on_transition(self, transition: Transition) -> None:
        """A local failure moves the group on; FATAL makes the generation FATAL. The report
        waits for the end of the current tick: a last quick failure is BACKOFF then FATAL at
        once, and then only the FATAL is told (the others stop rather than restart)."""
        if transition.new is State.FATAL:
            self._defer("fatal", transition.reason)
            return
        failed = transition.new is State.EXITED or (  # EXITED -> BACKOFF was told already
            transition.new is State.BACKOFF and transition.old is not State.EXITED
        )
        restarts = self._health_restarts()
        if transition.new is State.STOPPING and restarts > self._seen_health_restarts:
            failed = True
        self._seen_health_restarts = restarts
        if failed:
            self._defer("restart", transition.reason)

    def _defer(self, what: str, reason: str) -> None:
        if self._pending is None:
            asyncio.get_running_loop().call_soon(self._flush)
        if self._pending is None or what == "fatal":
            self._pending = (what, reason)

    def _flush(self) -> None:
        if self._pending is not None:
            what, reason = self._pending
            self._pending = None
            self._report(what, reason)

    def request_restart(self, reason: str) -> None:
        """An operator's restart of this rank restarts the whole group."""
        self._report("restart", reason)

    def request_drain(self, stop: bool) -> None:
        self._spawn(self._post("drain", {"stop": stop}), "drain")

    def request_undrain(self) -> None:
        self._drained_at = None
        self._spawn(self._post("undrain", {}), "undrain")

    # --- config server calls ----------------------------------------------------------------

    def _report(self, what: str, reason: str) -> None:
        body = {"rank": self.rank, "generation": self.generation, "reason": reason[:500]}
        self._spawn(self._post(what, body), what)

    def _spawn(self, call: Awaitable[dict[str, Any] | None], name: str) -> None:
        async def run() -> None:
            record = await call
            if record is not None:
                self._adopt_own(record)

        task = asyncio.create_task(run(), name=f"group-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if name in ("restart", "fatal", "drain", "undrain"):  # ours: they settle first
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    def _adopt_own(self, record: dict[str, Any]) -> None:
        """After our own failure or restart the local engine is already restarting: it is
        the new generation's, with no second restart."""
        if int(record["generation"]) > self.generation:
            self.generation = int(record["generation"])
        self.record = record
        self._wake.set()

    async def _post(self, what: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Retried until the config server answers: a lost report would leave the others
        running beside a dead rank."""
        for attempt in range(60):
            try:
                reply = await self._client.post(
                    f"{self.url}/{what}", json=body, headers=self._headers, timeout=self._timeout_s
                )
            except httpx.HTTPError as exc:
                self.last_error = f"{what}: {type(exc).__name__}: {exc}"
            else:
                if reply.status_code == 200:
                    record = self._record(reply)
                    if record is not None:
                        return record
                    break
                self.last_error = f"{what}: HTTP {reply.status_code}: {reply.text[:300]}"
                if reply.status_code != 503 and reply.status_code != 404:
                    break
                if reply.status_code == 404:  # the record lapsed: join first
                    await self.join()
            log.warning("group %s: %s", self.group_id, self.last_error)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        return None

    async def join(self) -> dict[str, Any] | None:
        body = {
            "nnodes": self.nnodes,
            "rank": self.rank,
            "generation": self.generation,
            "ttl_s": self._ttl_s,
        }
        try:
            reply = await self._client.put(
                self.url, json=body, headers=self._headers, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            self._failed(f"join: {type(exc).__name__}: {exc}")
            return None
        if reply.status_code != 200:
            self._failed(f"join: HTTP {reply.status_code}: {reply.text[:300]}")
            return None
        record = self._record(reply)
        if record is None:
            return None
        if not self._joined or self.last_error:
            log.info("rank %d joined group %s", self.rank, self.url)
        self._joined, self.last_error = True, None
        return record

    def _record(self, reply: httpx.Response) -> dict[str, Any] | None:
        """The config server's answer, checked: a bad one changes nothing here."""
        try:
            return GroupRecord.model_validate_json(reply.content).model_dump()
        except ValidationError as exc:
            self._failed(f"the config server answered a bad group record: {exc}")
            return None

    def _failed(self, error: str) -> None:
        if error != self.last_error:
            log.warning("group %s: %s", self.group_id, error)
        self.last_error = error

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            record = await self.join()
            settling = self._reports or self._pending is not None  # our own report goes first
            if record is not None and not settling:
                self.follow(record)
            self._wake.clear()
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def follow(self, record: dict[str, Any]) -> None:
        """Act on the group record: a newer generation, FATAL, a drain."""
        self.record = record
        generation = int(record["generation"])
        if generation > self.generation:
            self.generation = generation
            self._drained_at = None
            last = record.get("last_restart") or {}
            reason = f"group generation {generation}: rank {last.get('rank')}: {last.get('reason')}"
            log.warning("restarting with the group: %s", reason)
            self._owner.restart_engine(reason)
            return
        fatal = record.get("fatal")
        if fatal and generation == self.generation and self._process.state not in SETTLED:
            self._owner.stop_engine_for_group(
                f"group FATAL: rank {fatal.get('rank')}: {fatal.get('reason')}"
            )
        drain = record.get("drain")
        if drain and drain.get("generation") == generation and drain.get("at") != self._drained_at:
            self._drained_at = drain.get("at")
            self._apply(self._owner.drain_for_group(bool(drain.get("stop"))), "apply-drain")
        elif drain is None and self._drained_at is not None:  # another rank undrained
            self._drained_at = None
            self._apply(self._owner.undrain_for_group(), "apply-undrain")

    def _apply(self, call: Awaitable[Any], name: str) -> None:
        async def run() -> dict[str, Any] | None:
            await call
            return None

        self._spawn(run(), name)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- what it reports ----------------------------------------------------------------------

    @property
    def fatal(self) -> dict[str, Any] | None:
        record = self.record or {}
        fatal = record.get("fatal")
        return fatal if fatal and record.get("generation") == self.generation else None

    def brief(self) -> dict[str, Any]:
        """What the node's registration carries (the config server joins ranks by it)."""
        return {
            "id": self.group_id,
            "rank": self.rank,
            "nnodes": self.nnodes,
            "generation": self.generation,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.brief(),
            "url": self.url,
            "group_generation": (self.record or {}).get("generation"),
            "fatal": self.fatal,
            "last_restart": (self.record or {}).get("last_restart"),
            "last_error": self.last_error,
        }
