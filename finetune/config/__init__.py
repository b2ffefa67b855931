"""Configuration: the typed schema of every config group, each setting's declaration (default, range, help)."""
