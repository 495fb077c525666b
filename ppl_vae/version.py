"""The package version, in a module of its own so that any layer can read it."""

#: The version of the installed package.
__version__ = "0.1.0"
