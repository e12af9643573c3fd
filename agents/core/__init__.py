"""kaifong.agents.core — pure decisions: ring rules, matching, drill planning, incident decisions.

Layer: agents/core (innermost room). Imports no redis, faust, aiokafka, aiohttp nor
prometheus_client, and no other room of ``kaifong.agents``: every function here takes its
inputs (the clock included) and returns a value.
"""
