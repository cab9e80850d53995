"""The pipeline's stages: their settings (stdlib + PyYAML only) and the entry point that runs them."""
