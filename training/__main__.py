"""`python -m training ...` = `rlhf ...`: lets `torchrun -m training train-rm` / `accelerate launch -m training` work."""

from training.cli import app

app()
