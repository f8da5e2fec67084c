"""`python -m connector` is the `erpsync` command."""

from connector.cli import main

main()
