"""kaifong.agents.drills — pull-test responses (the scheduler and scoring build on this).

Layer: agents. Stores each response stage once per drill (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis


def drill_responses_key(drill_id: str) -> str:
    """Redis hash of a drill's responses by stage."""
    return f"kf:drill:{drill_id}:responses"


@dataclass
class Drills:
    """Handler for ``drills.responses.v1``."""

    redis: aioredis.Redis

    async def on_response(self, response: dict[str, Any]) -> None:
        """Record the first response of each stage (a later duplicate stage keeps the first)."""
        await self.redis.hsetnx(drill_responses_key(response["drill_id"]), response["stage"],
                                orjson.dumps(response))
