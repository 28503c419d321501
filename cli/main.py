"""`rlhf`: one command line for the whole stack.

    rlhf train-rm --out runs/rm              # reward model on the embedded hh-rlhf pairs
    rlhf export runs/rm --out bundles/rm-v1  # gated ONNX fp32 + int8 bundle
    rlhf eval --bundle bundles/rm-v1 --data pairs.jsonl.gz --json
    rlhf serve --bundle bundles/rm-v1        # scoring service
    rlhf train-policy --service http://localhost:8000 --out runs/pi
    rlhf demo                                # all of the above, end to end

Each sub-command lives in its own module and imports its heavy dependencies (torch, transformers)
only when it runs, so `rlhf --help` is instant and `rlhf serve` works in the torch-free image.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="rlhf",
    help="Reward-model training, a scoring service, and a policy-optimisation client.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bench_app = typer.Typer(
    help="Benchmarks that print ratios measured side by side in one run.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

# Sub-command registrations: one line per command, the function defined in its own module.
from cli.train_policy import train_policy_command  # noqa: E402

app.command("train-policy")(train_policy_command)

from bench.scale import bench_scale_command  # noqa: E402

bench_app.command("scale")(bench_scale_command)

from cli.export import bench_quant_command, eval_command, export_command  # noqa: E402

app.command("export")(export_command)
app.command("eval")(eval_command)
bench_app.command("quant")(bench_quant_command)
from cli.serve import serve_command  # noqa: E402

app.command("serve")(serve_command)
from bench.serve import bench_serve_command  # noqa: E402

bench_app.command("serve")(bench_serve_command)
from training.demo import demo_command  # noqa: E402

app.command("demo")(demo_command)

from cli.train_rm import train_rm_command  # noqa: E402

app.command("train-rm")(train_rm_command)
from bench.train import bench_train_command  # noqa: E402

bench_app.command("train")(bench_train_command)

from cli.score import score_command  # noqa: E402

app.command("score")(score_command)
from cli.import_rm import import_rm_command  # noqa: E402

app.command("import-rm")(import_rm_command)
from cli.correct_length import correct_length_command  # noqa: E402

app.command("correct-length")(correct_length_command)
from cli.compare import compare_command  # noqa: E402

app.command("compare")(compare_command)

if __name__ == "__main__":
    app()
