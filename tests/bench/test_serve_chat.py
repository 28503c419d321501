"""`rlhf bench serve` on a `chat` decoder bundle (issue 14's targets): the raw onnxruntime baseline and every
request the bench sends are read as the same tokens the service reads, and one run measures fp32 and int8
side by side (raw + service per precision), skipping a precision the bundle lacks with its reason."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.serve import PER_SAMPLE_BODIES, load_hh_pairs, requests_of, token_count, trainer_sample
from bench.serve_raw import raw_inputs
from service.bundle import load_bundle
from service.trainer_schemas import OWN_TEMPLATE
from tests.bench.conftest import ChatBundles
from training.data import embedded_pairs_path

ROUTES = ["get_reward", "classify", "slime/reward"]  # the trainer routes, each read from rendered text


def run_bench(bundle: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`rlhf bench serve` as a user runs it (its own process: it starts servers and handles SIGTERM)."""
    command = [sys.executable, "-m", "cli.main", "bench", "serve", "--bundle", str(bundle), "--out", str(out)]
    command += ["--threads", "1", "--pairs", "24", "--request-pairs", "4", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def results(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    *rows, last = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, last


def route_score(route: str, body: dict[str, Any]) -> float:
    """The raw score a trainer route answers for one sample."""
    if route == "get_reward":
        return float(body["rewards"][0])
    if route == "classify":
        return float(body["data"][0]["probs"][0])  # use_activation false: the raw score
    return float(body)  # slime: one JSON number


def test_raw_baseline_and_trainer_bodies_read_the_tokens_the_service_reads(chat_bundles: ChatBundles) -> None:
    from tests.training.test_import_rm import in_process

    bundle = chat_bundles.with_int8
    work = load_hh_pairs(embedded_pairs_path(), 12, seed=0)
    encoder = load_bundle(bundle).encoder()
    inputs = raw_inputs(bundle, "fp32", work, 1)
    raw = np.empty(len(work))
    raw[inputs.order] = np.concatenate([inputs.backend.score(batch) for batch in inputs.batches])
    assert inputs.precision == "fp32" and inputs.tokens == token_count(encoder, work)
    rendered = [trainer_sample(encoder, q, a) for q, a in work]
    assert all(prompt.startswith("<|im_start|>") and prompt.endswith("assistant\n") for prompt, _ in rendered)
    assert all(response.endswith("<|im_end|>") for _, response in rendered)

    with in_process(bundle) as client:
        served = []
        for body in requests_of(work, 5):  # what the bench's closed and open loops send: pairs
            response = client.post("/score", json=body)
            assert response.status_code == 200, response.text
            served += response.json()["scores"]
        assert np.abs(np.array(served) - raw).max() <= 1e-4  # same ids, same graph: same scores
        assert np.std(raw) > 1e-3  # the pairs really score differently: the comparison means something
        for route in ROUTES:
            scores, tokens = [], 0
            for prompt, response_text in rendered:
                response = client.post(f"/{route}", json=PER_SAMPLE_BODIES[route](prompt, response_text))
                assert response.status_code == 200, response.text
                scores.append(route_score(route, response.json()))
                if route == "get_reward":
                    assert response.json()["read_as"] == [OWN_TEMPLATE]  # the policy's template is the RM's
                if route == "classify":
                    tokens += response.json()["usage"]["prompt_tokens"]
            assert np.abs(np.array(scores) - raw).max() <= 1e-4, route
            if route == "classify":
                assert tokens == inputs.tokens  # the bench's token counts are what the service read


def test_one_run_measures_fp32_and_int8_of_a_chat_bundle(chat_bundles: ChatBundles, tmp_path: Path) -> None:
    args = ["--precision", "fp32,int8", "--concurrency", "1,2", "--per-sample-pairs", "8"]
    args += ["--per-sample-concurrency", "4", "--per-sample-routes", "score,get_reward"]
    done = run_bench(chat_bundles.with_int8, tmp_path, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows, last = results(tmp_path)
    tokens = token_count(
        load_bundle(chat_bundles.with_int8).encoder(), load_hh_pairs(embedded_pairs_path(), 24, 0)
    )
    for precision in ("fp32", "int8"):
        mine = [r for r in rows if r["precision"] == precision]
        systems = [(r["system"], r["concurrency"]) for r in mine]
        raw = (f"raw onnxruntime ({precision}, sorted x32)", "-")
        assert systems.count(raw) == 2  # before and after the services
        assert {("service", "1"), ("service", "2"), ("service /score", "8 x 16 pairs")} <= set(systems)
        assert ("service /get_reward", "4 x 1 pair") in systems
        assert any(s == "service" and c.startswith("open loop") for s, c in systems)
        for r in mine:
            assert r["errors"] == 0, r["first_error"]
            assert math.isfinite(r["pairs_per_s"]) and r["pairs_per_s"] > 0
            assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
            if r["pairs"] == 24:  # raw and the /score loops: the bundle's own token count of the same pairs
                assert r["tokens_per_s"] / r["pairs_per_s"] == pytest.approx(tokens / 24)
    assert not [r for r in rows if r["precision"] not in ("fp32", "int8")]  # no naive row for a chat bundle
    summary = last["summary"]
    keys = [f"service_vs_raw ({p})" for p in ("fp32", "int8")] + ["int8_vs_fp32_raw", "int8_vs_fp32_service"]
    keys += ["int8_vs_fp32_raw_per_cpu_s", "int8_vs_fp32_service_per_cpu_s"]
    for key in keys:
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert "service_vs_raw" not in summary  # a list was asked: every per-precision key says its precision
    assert last["precisions"] == ["fp32", "int8"] and last["input_format"] == "chat"
    assert list(last["skipped"]) == ["naive"] and "chat template" in last["skipped"]["naive"]
    table = (tmp_path / "table.md").read_text()
    assert (
        "[int8] service peak / raw onnxruntime:" in table and "int8 / fp32 pairs/s: raw onnxruntime" in table
    )


def test_a_bundle_without_int8_is_measured_at_fp32_and_says_why(
    chat_bundles: ChatBundles, tmp_path: Path
) -> None:
    bundle = chat_bundles.fp32_only
    done = run_bench(bundle, tmp_path, "--precision", "fp32,int8", "--concurrency", "2", "--no-per-sample")
    assert done.returncode == 0, done.stderr[-3000:]
    rows, last = results(tmp_path)
    assert {r["precision"] for r in rows} == {"fp32"} and all(r["errors"] == 0 for r in rows)
    reason = load_bundle(bundle).manifest.int8.reason
    assert "no int8 graph" in last["skipped"]["int8"] and reason in last["skipped"]["int8"]
    assert math.isfinite(last["summary"]["service_vs_raw (fp32)"])
    assert not [key for key in last["summary"] if "int8" in key]
    table = (tmp_path / "table.md").read_text()
    assert f"| not measured: {last['skipped']['int8']} | int8 |" in table
    assert "int8 not measured: " in table

    alone = run_bench(bundle, tmp_path / "int8", "--precision", "int8", "--no-per-sample")
    assert alone.returncode == 2 and "no int8 graph" in alone.stderr  # nothing left to measure: a clear error
    assert not (tmp_path / "int8").exists()
