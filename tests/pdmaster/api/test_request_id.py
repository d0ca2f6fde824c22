from __future__ import annotations

import uuid

from pdmaster.api.request_id import RequestIds


def test_made_request_ids_read_as_uuid4_hex_and_do_not_repeat() -> None:
    new_id = RequestIds()
    ids = [new_id() for _ in range(5 * RequestIds.BATCH + 7)]  # across batches
    assert len(set(ids)) == len(ids)
    for made in ids:
        parsed = uuid.UUID(made.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex.encode() == made
