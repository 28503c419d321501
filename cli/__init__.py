"""`rlhf`: every sub-command registered in one place (`cli.main`), one module per command."""
