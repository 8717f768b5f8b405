"""The `resnetkit` command line: argument parsing, printing and exit codes only."""
