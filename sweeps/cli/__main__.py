"""`python -m sweeps.cli ...`, the same as the `beamtune` console script."""
from sweeps.cli import app

app()
