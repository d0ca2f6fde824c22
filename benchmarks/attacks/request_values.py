"""Bad values in requests: path parameters that are not plain ids get a 4xx, never a 500."""

from __future__ import annotations

import httpx

from benchmarks.attacks.target import Outcome, Target


async def bad_path_parameters(target: Target) -> Outcome:
    """Unicode digits and 5000-digit ids in path parameters: a 4xx each, never a 500."""
    ids = ["\u00b2", "9" * 5000, "-1", "1e3"]
    cfg = target.config_server.url
    urls = [f"{target.url}/v1/nodes/{i}/drain" for i in ids]
    urls += [f"{cfg}/v1/masters/{i}" for i in ids]
    async with httpx.AsyncClient(timeout=5) as client:
        statuses = [(await client.post(u)).status_code for u in urls[: len(ids)]]
        statuses += [(await client.get(u)).status_code for u in urls[len(ids) :]]
    return Outcome(
        "path parameters: '\u00b2', 5000 digits, -1, 1e3",
        len(statuses),
        sum(400 <= s < 500 for s in statuses),
        details={"statuses": statuses},
    )
