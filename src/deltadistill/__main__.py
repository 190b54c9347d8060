"""`python -m deltadistill` (which `torchrun -m deltadistill` needs) runs the CLI."""

from .cli import app

app()
