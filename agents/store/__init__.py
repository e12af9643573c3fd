"""kaifong.agents.store — the only room that names a Redis key or holds Lua.

Layer: agents/store. Imports core, streams and schemas only. Key names live in
:mod:`kaifong.agents.store.keys`; the Lua scripts are ``.lua`` files in ``lua/``, loaded once
by :mod:`kaifong.agents.store.scripts`.
"""
