"""``python -m mtgraft``: the same as the ``mtgraft`` command."""

from mtgraft.cli.app import main

main()
