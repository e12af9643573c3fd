"""kaifong.agents.flows — thin consumers: read, call core, call store, send, count.

Layer: agents/flows. Imports core, store, streams and schemas; never web, report, tools or the
worker.
"""
