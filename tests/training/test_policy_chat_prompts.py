"""Prompts given as chat messages reach the reward side as the conversation the policy answered, system
message included: the proxy over HTTP, the in-process gold, the saved samples and their re-scoring;
hh and plain prompts keep sending exactly the pairs they sent before.

The chat bundle is a tiny random Llama reward model with SmolLM2's real tokenizer and chat template,
imported as a `chat` bundle (`rlhf import-rm`); the pair bundle is the tiny MiniLM one. Both are
served by the production server on a real socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from service.app import create_app
from service.client import AsyncRewardClient
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.decoder_helpers import smollm_tokenizer_dir
from tests.training.policy_helpers import make_tiny_policy_dir, tiny_config
from tests.training.test_import_rm import SMALL, make_checkpoint
from tests.training.test_policy_compare import QUESTIONS, write_run
from training.policy.compare import compare_runs, load_run
from training.policy.errors import GoldError, PromptError
from training.policy.gold import GoldScorer, gold_scores
from training.policy.prompts import (
    Prompt,
    load_prompts_file,
    messages_to_hh,
    prompt_from_hh,
    prompt_from_text,
)
from training.policy.report import Sample, read_samples
from training.policy.rescore import rescore_samples, restore_messages
from training.policy.rollout import Group
from training.policy.scoring import Scores, rm_answer, rm_item, score_answers
from training.policy.trainer import train_async
from training.reward.export.config import ImportConfig
from training.reward.export.import_rm import import_checkpoint

TOLERANCE = 1e-5  # the served score and the in-process gold: the same graph, other batches
KIND = {"role": "system", "content": "Answer like a kind baker."}
RUDE = {"role": "system", "content": "Answer like a rude pirate."}
USER = {"role": "user", "content": "How do I bake bread?"}
ANSWERS = ["Mix flour, water and yeast, then bake it.", "No.", ""]
DIALOGUE = "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant:"
# prompts for the tiny policy (its vocabulary), each question asked under one system message
POLICY_PROMPTS = [
    [{"role": "system", "content": system}, {"role": "user", "content": question}]
    for system, question in [
        ("you are a kind friend", "how do i bake bread"),
        ("you are a bad friend", "help me steal a car"),
        ("you are a kind friend", "what is the best way to make a cake"),
        ("you are a bad friend", "is it safe"),
        ("you are a kind friend", "where is the oven"),
        ("you are a bad friend", "tell me some ideas"),
    ]
]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_prompt(*messages: dict[str, str]) -> Prompt:
    """A prompt as a prompts file gives it: chat messages."""
    turns = tuple((m["role"], m["content"]) for m in messages)
    return Prompt(turns, messages_to_hh(turns), from_chat=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-prompts")
    tokenizer = smollm_tokenizer_dir(root / "smollm-tokenizer")
    checkpoint = make_checkpoint(root / "llama-rm", "llama", tokenizer)
    chat = root / "chat-bundle"
    import_checkpoint(checkpoint, chat, ImportConfig(**{**SMALL, "int8": False}))  # type: ignore[arg-type]
    return {
        "chat": chat,
        "pair": make_tiny_bundle(root / "pair-bundle", version="pair", seed=2, with_int8=False),
        "policy": make_tiny_policy_dir(root / "policy"),
        "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in POLICY_PROMPTS]),
    }


@pytest.fixture(scope="module")
def chat_live(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["chat"]))) as server:
        yield server


@pytest.fixture(scope="module")
def pair_live(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["pair"]))) as server:
        yield server


class Recording(httpx.AsyncBaseTransport):
    """Real HTTP; keeps the JSON body of every POST /score, as sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/score":
            self.bodies.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def score_with(url: str, prompt: Prompt | str, answers: Sequence[str]) -> tuple[Scores, list[dict[str, Any]]]:
    """`score_answers` through the real client, and the bodies it posted."""

    async def run() -> Scores:
        client = AsyncRewardClient(url, transport=transport, max_retries=0)
        try:
            return await score_answers(client, prompt, answers, "raw")
        finally:
            await client.aclose()

    transport = Recording()
    scores = asyncio.run(run())
    return scores, transport.bodies


def served(url: str, items: Sequence[Any]) -> np.ndarray:
    """The service's own /score of items (pairs as tuples, or {"messages"}): the reference."""
    pairs = [{"question": i[0], "answer": i[1]} if isinstance(i, tuple) else i for i in items]
    response = httpx.post(f"{url}/score", json={"pairs": pairs}, timeout=30)
    assert response.status_code == 200, response.text
    return np.array(response.json()["scores"], dtype=np.float64)


def groups_of(*prompts: Prompt) -> list[Group]:
    empty = torch.zeros(0)
    return [Group(p, empty, empty, empty, empty, list(ANSWERS), empty) for p in prompts]


def test_chat_prompts_are_asked_as_conversations_and_every_other_prompt_as_before(tmp_path: Path) -> None:
    rows = [
        {"prompt": "How do I bake bread?"},
        {"question": DIALOGUE},
        {"prompt": [KIND, USER]},
        {"prompt": [USER]},
    ]
    plain, hh, system, bare = load_prompts_file(write_jsonl(tmp_path / "p.jsonl", rows))
    assert not plain.from_chat and not hh.from_chat and system.from_chat and bare.from_chat
    assert rm_item(plain, " Bake it.\n") == ("\n\nHuman: How do I bake bread?\n\nAssistant:", " Bake it.")
    assert rm_item(hh, "Bake it.") == (DIALOGUE, " Bake it.")
    assert rm_item(DIALOGUE, "Bake it.") == (DIALOGUE, " Bake it.")  # a bare question: an hh prompt
    assert rm_item(system, "Bake it.") == {
        "messages": [KIND, USER, {"role": "assistant", "content": "Bake it."}]
    }
    assert rm_item(bare, "") == {"messages": [USER, {"role": "assistant", "content": ""}]}
    late = write_jsonl(tmp_path / "late.jsonl", [{"prompt": [USER, KIND, USER]}])
    with pytest.raises(PromptError, match=r"late\.jsonl:1: message 1: a system message may only come first"):
        load_prompts_file(late)


def test_a_chat_bundle_reads_the_system_message_the_policy_was_given(chat_live: LiveServer) -> None:
    kind, rude = chat_prompt(KIND, USER), chat_prompt(RUDE, USER)
    assert kind.question == rude.question  # the hh text the RM was sent before cannot tell them apart
    got, bodies = score_with(chat_live.url, kind, ANSWERS)
    sent = [{"messages": [KIND, USER, {"role": "assistant", "content": a}]} for a in ANSWERS]
    assert bodies == [{"pairs": sent}]
    assert got.failed == 0
    assert np.abs(got.raw - served(chat_live.url, sent)).max() <= TOLERANCE
    other, _ = score_with(chat_live.url, rude, ANSWERS)
    assert np.abs(got.raw - other.raw).min() > 1e-3  # only the system message differs


def test_hh_and_plain_prompts_send_todays_pairs_and_a_pair_bundle_reads_a_chat_prompt_as_before(
    files: dict[str, Path], pair_live: LiveServer
) -> None:
    for prompt in (prompt_from_hh(DIALOGUE), prompt_from_text("How do I bake bread?")):
        got, bodies = score_with(pair_live.url, prompt, ANSWERS)
        pairs = [{"question": prompt.question, "answer": rm_answer(a)} for a in ANSWERS]
        assert bodies == [{"pairs": pairs}]  # the request of every run before chat prompts, as it was
        assert np.array_equal(got.raw, served(pair_live.url, [(p["question"], p["answer"]) for p in pairs]))

    chat = chat_prompt(USER)
    got, bodies = score_with(pair_live.url, chat, ANSWERS)
    assert all("messages" in item for item in bodies[0]["pairs"])
    before, _ = score_with(pair_live.url, chat.question, ANSWERS)  # what such a prompt was asked before
    assert np.array_equal(got.raw, before.raw)
    encoder = GoldScorer.load(files["pair"]).model.encoder  # the same ids, not merely close scores
    conversations = [rm_item(chat, a)["messages"] for a in ANSWERS]  # type: ignore[index]
    assert encoder.encode_conversations(conversations) == encoder.encode(
        [chat.question] * len(ANSWERS), [rm_answer(a) for a in ANSWERS]
    )
    with_system, _ = score_with(pair_live.url, chat_prompt(KIND, USER), ANSWERS)
    assert np.array_equal(with_system.raw, got.raw)  # hh has no system turn: a pair bundle never read one


def test_the_gold_reads_a_chat_prompt_as_the_service_does(
    files: dict[str, Path], chat_live: LiveServer
) -> None:
    gold = GoldScorer.load(files["chat"], batch_size=2)  # other batches than the service's
    groups = groups_of(chat_prompt(KIND, USER), chat_prompt(RUDE, USER), prompt_from_hh(DIALOGUE))
    local = gold_scores(gold, groups)
    expected = served(chat_live.url, [rm_item(g.prompt, a) for g in groups for a in g.texts])
    assert np.abs(np.concatenate(local) - expected).max() <= TOLERANCE
    assert np.abs(local[0] - local[1]).min() > 1e-3  # the system message reaches the gold too
    pair_gold = GoldScorer.load(files["pair"])  # a pair gold: hh turns, as before
    assert np.array_equal(
        gold_scores(pair_gold, groups_of(chat_prompt(USER)))[0],
        pair_gold.score([messages_to_hh([("user", USER["content"])])] * 3, [rm_answer(a) for a in ANSWERS]),
    )
    with pytest.raises(GoldError, match=r"cannot read item 1: .*must be the assistant answer"):
        gold.score_items([("q", " a"), {"messages": [USER]}])


def test_a_run_on_chat_prompts_sends_conversations_and_its_samples_rescore_alike(
    files: dict[str, Path], chat_live: LiveServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = tiny_config(
        files["policy"],
        out,
        files["prompts"],
        service_urls=[chat_live.url],
        steps=1,
        gold_bundle=str(files["chat"]),
    )
    transport = Recording()

    async def run() -> dict[str, Any]:
        client = AsyncRewardClient(chat_live.url, transport=transport, max_retries=0)
        try:
            return await train_async(config, client=client)
        finally:
            await client.aclose()

    asyncio.run(run())
    items = [item for body in transport.bodies for item in body["pairs"]]
    assert len(items) == 2 * 2 * 2 + 2 * 2  # before and after evaluation (2 prompts x 2), one step (2 x 2)
    for item in items:
        system, user, answer = item["messages"]
        assert [system, user] in POLICY_PROMPTS and answer["role"] == "assistant"

    rows = [json.loads(line) for line in (out / "eval_after_samples.jsonl").read_text().splitlines()]
    assert all(row["messages"] in POLICY_PROMPTS for row in rows)
    samples = read_samples(out / "eval_after_samples.jsonl")
    gold = GoldScorer.load(files["chat"])
    run_config = json.loads((out / "config.json").read_text())
    again = rescore_samples([(run_config, samples)], gold).samples[0]
    assert (
        np.abs(np.array([s.gold_score for s in again]) - [s.gold_score for s in samples]).max() <= TOLERANCE
    )

    older = [dataclasses.replace(s, messages=None) for s in samples]  # a run that kept no messages
    rescored = rescore_samples([(run_config, older)], gold)
    assert [s.messages for s in rescored.samples[0]] == [s.messages for s in samples]  # found by question
    assert rescored.unmatched_chats == [0]
    assert [s.gold_score for s in rescored.samples[0]] == [s.gold_score for s in again]


def test_older_samples_get_their_chat_messages_back_only_when_their_question_names_one() -> None:
    kind, rude, other = (
        chat_prompt(KIND, USER),
        chat_prompt(RUDE, USER),
        chat_prompt(RUDE, {"role": "user", "content": "Why?"}),
    )
    plain = prompt_from_text("Where is the oven?")
    kept = ((KIND["role"], KIND["content"]), ("user", "Why?"))
    samples = [
        Sample(0, kind.question, "a", 0.0),  # two chat prompts ask it: which one cannot be known
        Sample(1, other.question, "b", 0.0),
        Sample(2, plain.question, "c", 0.0),  # an hh / plain prompt: asked by its question, as before
        Sample(3, other.question, "d", 0.0, messages=kept),  # saved with its messages: kept
        Sample(4, "\n\nHuman: not in the source\n\nAssistant:", "e", 0.0),
    ]
    restored, unknown = restore_messages(samples, [kind, rude, other, plain])
    assert [s.messages for s in restored] == [None, other.messages, None, kept, None] and unknown == 1
    assert restore_messages(samples, None) == (samples, 0)


def test_compare_restores_an_older_runs_chat_prompts_and_says_which_it_could_not(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """An older run (samples without messages) on chat prompts, re-scored by a chat gold: each question
    named by one chat prompt is asked as that conversation; the one two system messages share is asked
    as hh text and the note says so."""
    # each question's human turns as written (hh_to_messages would strip them: another question)
    turns = [
        [{"role": "user", "content": c} for c in q.removesuffix("\n\nAssistant:").split("\n\nHuman: ")[1:]]
        for q in QUESTIONS
    ]
    rows = [{"prompt": [KIND, *t]} for t in turns] + [{"prompt": [RUDE, *turns[0]]}]
    prompts = write_jsonl(tmp_path / "chat-prompts.jsonl", rows)
    source = load_prompts_file(prompts)
    assert [p.question for p in source[:4]] == QUESTIONS  # the old run's saved questions name them
    old = write_run(tmp_path / "runs", "old", prompts)
    gold = GoldScorer.load(files["chat"])
    comparison = compare_runs([load_run(old)], gold, "chat-gold")
    assert comparison.notes == [
        "old: 1 question(s) shared by chat prompts with different system messages, saved without their "
        "messages by an older run: scored as hh text, without a system message"
    ]
    judged = comparison.runs[0].before_samples
    assert [s.messages is not None for s in judged] == [s.prompt != 0 for s in judged]
    expected = gold.score_items(
        [rm_item(source[s.prompt] if s.prompt else QUESTIONS[0], s.answer) for s in judged]
    )
    got = np.array([s.gold_score for s in judged])
    assert np.abs(got - expected).max() <= TOLERANCE
    as_pairs = gold.score([QUESTIONS[s.prompt] for s in judged], [rm_answer(s.answer) for s in judged])
    restored = np.array([s.prompt != 0 for s in judged])
    assert np.abs(got - as_pairs)[restored].min() > 1e-3 and np.array_equal(
        got[~restored], as_pairs[~restored]
    )


def test_samples_keep_their_chat_messages_and_older_files_still_read(tmp_path: Path) -> None:
    rows = [
        {"prompt": 0, "question": "\n\nHuman: Hi\n\nAssistant:", "answer": "Hello.", "score": 0.5},  # before
        {"prompt": 1, "question": "\n\nHuman: Hi\n\nAssistant:", "messages": [KIND, {"role": "user", "content": "Hi"}],
         "answer": "Hello.", "score": 0.25, "gold_score": 0.1},
    ]  # fmt: skip
    old, new = read_samples(write_jsonl(tmp_path / "samples.jsonl", rows))
    assert old == Sample(0, "\n\nHuman: Hi\n\nAssistant:", "Hello.", 0.5)
    assert new.messages == (("system", KIND["content"]), ("user", "Hi")) and new.gold_score == 0.1
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "messages": [{"role": "user"}]}])
    with pytest.raises(ValueError, match="line 2: every message needs 'role' and 'content' strings"):
        read_samples(bad)
