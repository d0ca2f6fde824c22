"""A stand-in for LightLLM's own config server (the true edge: not our component): the
websocket registration, the id ranges, and nothing under /v1, as LightLLM serves them.

``python -m tests.pdmaster.cluster.lightllm_config_server --port P``; ``GET /fake/stats``
says how many registrations it received.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def create_app() -> FastAPI:
    app = FastAPI()
    stats = {"registrations": 0, "heartbeats": 0, "id_ranges": 0}
    next_id = [1000]

    @app.websocket("/pd_master_register")
    async def register(ws: WebSocket) -> None:
        await ws.accept()
        try:
            await ws.receive_bytes()
            stats["registrations"] += 1
            while True:
                await ws.receive_text()
                stats["heartbeats"] += 1
        except WebSocketDisconnect:
            pass

    @app.get("/allocate_global_unique_id_range")
    async def id_range() -> dict[str, int]:
        stats["id_ranges"] += 1
        start = next_id[0]
        next_id[0] += 8192
        return {"start_id": start, "end_id": start + 8192}

    @app.get("/fake/stats")
    async def fake_stats() -> dict[str, int]:
        return stats

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
