"""`python -m kgenv` is the kgenv command."""

from kgenv.cli import main

main()
