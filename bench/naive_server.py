"""The naive baseline for `rlhf bench serve`: FastAPI + transformers, one forward per request.

    python -m bench.naive_server --model DIR --port 8001 --threads 2

What a first attempt at a reward server looks like: a sync route (run in FastAPI's thread pool)
that tokenises the request's pairs with the Hugging Face tokenizer and runs one PyTorch forward on
them. No batching across requests, no length sorting, no queue. Same request/response shape as the
service's /score so the same load generator drives both.
"""

from __future__ import annotations

from typing import Annotated

import typer

from service.schemas import PairsRequest  # module level: FastAPI resolves the route's annotation here


def build_app(model_dir: str, threads: int, max_length: int):  # type: ignore[no-untyped-def]
    import torch
    from fastapi import FastAPI
    from transformers import AutoTokenizer

    from training.reward.model import load_reward_model

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_reward_model(model_dir).eval()
    app = FastAPI(title="naive reward server")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/score")
    def score(body: PairsRequest) -> dict[str, object]:
        questions = [p.question for p in body.pairs]
        answers = [p.answer for p in body.pairs]
        batch = tokenizer(
            questions,
            answers,
            padding=True,
            truncation="longest_first",
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = model(**batch).logits[:, 0]
        return {"scores": logits.double().tolist()}

    return app


def main(
    model: Annotated[str, typer.Option(help="Hugging Face model dir (default: embedded MiniLM)")] = "",
    port: Annotated[int, typer.Option()] = 8001,
    threads: Annotated[int, typer.Option(help="torch intra-op threads")] = 2,
    max_length: Annotated[int, typer.Option()] = 512,
) -> None:
    import uvicorn

    from training.reward.model import default_base_model

    app = build_app(model or default_base_model(), threads, max_length)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    typer.run(main)
