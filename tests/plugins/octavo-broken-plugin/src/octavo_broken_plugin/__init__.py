"""A test plugin that cannot be imported."""
