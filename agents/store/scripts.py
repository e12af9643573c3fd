"""kaifong.agents.store.scripts — the Lua scripts: read from ``lua/*.lua`` once, run NOSCRIPT-safe.

Layer: agents/store. A script file may start with ``--! include NAME`` lines: the named file of
shared functions (``lua/lib/NAME.lua``) is put in front of it, once, when the script is read. That
is the only composition there is; nothing assembles Lua from Python strings.

:class:`Scripts` loads each script's SHA once per connection and, when Redis has forgotten it
(``NOSCRIPT``: a restart, a ``SCRIPT FLUSH``, a fail-over), loads it again and retries once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

_INCLUDE = re.compile(r"^--! include ([a-z_]+)\s*$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (``lua/NAME.lua``), with its includes in front."""
    folder = resources.files("kaifong.agents.store").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text("utf-8")
    libs = _INCLUDE.findall(text)
    parts = [folder.joinpath("lib", f"{lib}.lua").read_text("utf-8") for lib in dict.fromkeys(libs)]
    return "".join(parts) + _INCLUDE.sub("", text)


class Scripts:
    """Runs the named scripts on one Redis connection (pool).

    ``sources`` replaces the text of some scripts (a test's variant of one, say); every other
    name is read from the package.
    """

    def __init__(self, redis: aioredis.Redis, sources: Mapping[str, str] | None = None) -> None:
        self.redis = redis
        self._sources = dict(sources or {})
        self._sha: dict[str, str] = {}

    def text(self, name: str) -> str:
        """The text script ``name`` runs as."""
        return self._sources.get(name) or source(name)

    def sha(self, name: str) -> str:
        """The SHA1 Redis knows script ``name`` by."""
        sha = self._sha.get(name)
        if sha is None:
            sha = self._sha[name] = hashlib.sha1(self.text(name).encode(), usedforsecurity=False).hexdigest()
        return sha

    async def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` script ``name``; on ``NOSCRIPT`` load it and run it again (once)."""
        try:
            return await self.redis.evalsha(self.sha(name), len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:  # Redis restarted (or failed over) and lost its script cache
            await self.redis.script_load(self.text(name))  # type: ignore[misc]
            return await self.redis.evalsha(self.sha(name), len(keys), *keys, *args)  # type: ignore[misc]

    def queue(self, pipe: Any, name: str, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue script ``name`` on a pipeline (call :meth:`preload` first: a pipeline cannot
        recover from ``NOSCRIPT`` one command at a time)."""
        pipe.evalsha(self.sha(name), len(keys), *keys, *args)

    async def preload(self, *names: str) -> None:
        """Load scripts ahead (before pipelining them)."""
        for name in names:
            await self.redis.script_load(self.text(name))  # type: ignore[misc]
