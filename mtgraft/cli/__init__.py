"""The mtgraft typer app (thin: every command parses options, calls mtgraft, prints)."""
