"""A test plugin that overrides built-in implementations."""
