"""``python -m ether_prep``: the ``ether-prep`` command line."""

from .cli import app

app(prog_name="ether-prep")
