"""octavo-example-plugin: a small third-party Octavo plugin implementing every hook."""

__version__ = "0.1.0"
