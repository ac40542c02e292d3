"""Workflows (layer 6): what combines parts of layer 4 — graft then register, continual learning by grafting
(train stages, then graft each), and whole studies from one YAML. The CLI calls these; they call no CLI."""
