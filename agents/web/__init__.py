"""kaifong.agents.web.server — HTTP: probes, metrics, the JSON API, the live feed (SSE), the console, auth.

Layer: agents/web. Given an explicit small services object (never the Worker); HTTP status
codes live only in this room.
"""
