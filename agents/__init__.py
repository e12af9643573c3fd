"""kaifong.agents — the processing: pure decision functions and the thin agents around them.

Layer: top. Imports kaifong.streams and kaifong.schemas.
"""
