"""`python -m deltadistill` (which `torchrun -m deltadistill` needs) runs the CLI."""

from .apps.cli import app

app()
