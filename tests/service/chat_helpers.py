"""Chat-template test material: hand-written templates in the styles of real model families, and a
tiny byte-level BPE tokenizer built in the test (no model files) that knows their special tokens.

    tokenizer = tiny_bpe()                              # tokenizers.Tokenizer, milliseconds to build
    hf = hf_tokenizer(tokenizer, CHATML)                # the transformers tokenizer for the parity side
    encoder = chat_encoder(tokenizer, CHATML, 512)      # ours
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from service.chat import ChatEncoder
from service.chat_template import ChatTemplate
from service.encoding import TruncationPolicy

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
ADDED = [
    "<|endoftext|>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]  # fmt: skip

# Qwen2 / ChatML: a default system message when the conversation has none (as SmolLM2's template).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-3: bos first, contents trimmed, headers as special tokens.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = '<|begin_of_text|>' + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Mistral / Llama-2 style: a system message folded into the first user turn, strict alternation
# enforced with raise_exception, whitespace control on multi-line blocks.
STRICT = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- else %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""

# The environment's extras: trim_blocks/lstrip_blocks without '-', namespace, loop controls,
# tojson with options, dict(), the {% generation %} tag, strftime_now, tools/documents defined as none.
FEATURES = """{% set ns = namespace(turns=0, first_user=none) %}
{% for message in messages %}
    {% set ns.turns = ns.turns + 1 %}
    {% if message.role == 'user' and ns.first_user is none %}{% set ns.first_user = message.content %}{% endif %}
{% endfor %}
{% if tools is not none or documents is not none %}{{ raise_exception('tools must be none') }}{% endif %}
{{ bos_token }}year={{ strftime_now('%Y') }} turns={{ ns.turns }} first={{ ns.first_user | tojson }}
meta={{ dict(a=1, b=[1, 2], c='é<>') | tojson(sort_keys=True, separators=(',', ':')) }}
{% for message in messages %}
    {% if loop.index > 6 %}{% break %}{% endif %}
    {% if message.role == 'assistant' %}
<|im_start|>assistant
{% generation %}{{ message.content }}{% endgeneration %}{{ eos_token }}
    {% else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "strict": STRICT, "features": FEATURES}

CORPUS = [
    "Hello there, how are you doing today? I am fine, thank you.",
    "You are a helpful assistant. The sea is large, deep and salty.",
    "How do I bake bread? Mix flour, water, salt and yeast, let it rise, then bake it hot.",
    "system user assistant INST turns first meta year",
]


def tiny_bpe() -> Tokenizer:
    """A byte-level BPE (GPT-2 / Llama-3 / Qwen2 family) trained here on a few sentences, with every
    template's special tokens added; offsets are trimmed like GPT-2's, which the answer span must handle."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=ADDED,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return tokenizer


def hf_tokenizer(tokenizer: Tokenizer, template: str) -> Any:
    """The same tokenizer as transformers sees it, with ``template`` as its chat template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.to_str()), **SPECIAL_TOKENS)
    hf.chat_template = template
    return hf


def chat_encoder(tokenizer: Tokenizer, template: str, max_length: int = 512) -> ChatEncoder:
    copy = Tokenizer.from_str(tokenizer.to_str())
    return ChatEncoder(copy, ChatTemplate(template, SPECIAL_TOKENS), TruncationPolicy(max_length, 0))
