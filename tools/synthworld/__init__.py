"""The synthetic photo world with exact annotations (docs/synth.md)."""
