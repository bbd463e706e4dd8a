"""``python -m liftvid.cli``: the ``liftvid`` command (tests and workflows run it so)."""

from .app import app

app()
