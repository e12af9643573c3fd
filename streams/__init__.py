"""kaifong.streams — the wire: settings, topics, codecs, the Faust app factory, metrics, clients.

Layer: middle. Imports kaifong.schemas only.
"""
