"""`python -m kgenv` is the kgenv command."""

from .cli import main

main()
