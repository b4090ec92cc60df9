"""The ``shelfsight`` command line: one entry point, each stage registers its own subcommands."""
