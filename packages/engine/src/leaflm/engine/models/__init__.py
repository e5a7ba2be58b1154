"""Model architectures re-implemented on leaflm layers; see `registry` for the lookup."""
