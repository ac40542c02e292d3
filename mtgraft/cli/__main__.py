"""``python -m mtgraft.cli``: the same as the ``mtgraft`` command (the library package has no entry point)."""

from mtgraft.cli.app import main

main()
