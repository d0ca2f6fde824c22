"""A stand-in master: registers with a config server (pdmaster.cluster.registration), no more.

``python -m tests.config_server.fake_master --config-server H:P --node-id N --address A``
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import httpx

from pdmaster.cluster.registration import MasterRegistration


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config-server", required=True)
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--retry-max", type=float, default=0.5)
    p.add_argument("--register-token", default=None)
    p.add_argument("--no-websocket", dest="websocket", action="store_false")
    p.add_argument("--no-lease", dest="lease", action="store_false")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await MasterRegistration(
                client,
                args.config_server,
                args.node_id,
                args.address,
                ttl_s=args.ttl,
                heartbeat_s=args.heartbeat,
                register_token=args.register_token,
                websocket=args.websocket,
                lease=args.lease,
                retry_initial_s=0.1,
                retry_max_s=args.retry_max,
            ).run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
