"""kaifong.schemas — the published event contracts (JSON Schema) and their Python records.

Layer: bottom. Imports nothing of kaifong; streams and agents import it.
"""
