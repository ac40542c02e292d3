"""mtgraft: task-specific skill localization (grafting) in fine-tuned language models."""

__version__ = "0.1.0"
