"""Training and validation of the multi-granularity CLIP on the synthetic world (docs/synth.md)."""
