"""kaifong.agents.tools — operator tools: the benchmark (``kaifong bench``).

Layer: agents/tools. May use any room below it; nothing but the CLI imports it.
"""
