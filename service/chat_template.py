"""Render a model's chat template with jinja2 exactly as transformers does, without transformers.

    template = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"})
    text = template.render(conversation)   # == tokenizer.apply_chat_template(messages, tokenize=False)

Why a renderer of our own: the service is torch-free, and a `chat` bundle is only worth serving if
the text its model reads in the service is byte for byte the text it read in training. So this
module reproduces what `transformers.utils.chat_template_utils` sets up (tests compare both on real
and hand-written templates):

* an ``ImmutableSandboxedEnvironment`` (templates come from model repositories: untrusted code) with
  ``trim_blocks`` and ``lstrip_blocks``, and the ``loopcontrols`` extension (``{% break %}``);
* the ``{% generation %}`` tag some templates use to mark assistant text, rendered as its body;
* ``raise_exception(msg)``, a ``tojson`` filter that does not HTML-escape and takes ``indent``,
  ``separators``, ``sort_keys``, ``ensure_ascii``; ``strftime_now(fmt)`` (the local time now, as in
  transformers: a template that calls it renders a different date on another day); ``dict`` and a
  ``namespace`` that refuses underscore-prefixed names;
* the variables: ``messages``, ``tools=None``, ``documents=None``, ``add_generation_prompt`` and the
  tokenizer's named special tokens (its ``special_tokens_map``: ``bos_token``, ``eos_token``, ...),
  which the bundle stores beside the template.

Any failure (a syntax error when compiling, ``raise_exception``, an undefined variable used in an
operation, a sandbox refusal) raises :class:`service.conversation.TemplateRenderError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.conversation import Message, TemplateRenderError

TEMPLATE_FILE: Final = "chat_template.jinja"  # where transformers >= 4.43 saves a tokenizer's template
# The tokenizer attributes transformers passes to a template (`special_tokens_map`), when set.
SPECIAL_TOKEN_NAMES: Final = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)  # fmt: skip
# The variables every render sets; a special token may not take one of these names.
RENDER_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` → its body (transformers tracks the span; we do not
    need to, but a template using the tag must still compile)."""

    tags = {"generation"}  # noqa: RUF012 - the type jinja2.ext.Extension declares

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore-prefixed names (a way out of the sandbox)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    """A compiled chat template and the special-token variables it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, str]) -> None:
        clash = sorted(set(special_tokens) & set(RENDER_VARIABLES))
        if clash:
            raise ValueError(f"special token names {clash} clash with the template's own variables")
        self.source = source
        self.special_tokens = dict(special_tokens)
        self.sha256 = hashlib.sha256(source.encode("utf-8")).hexdigest()
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateRenderError(f"the chat template does not compile: {exc}") from exc

    def render(self, conversation: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as text, as `apply_chat_template(..., tokenize=False)` renders it."""
        try:
            return self._template.render(
                messages=[m.as_dict() for m in conversation],
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as exc:  # raise_exception, undefined, sandbox refusals
            raise TemplateRenderError(f"the chat template refused the conversation: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # a template's own Python-level failure on this input, e.g. `content | trim` on an odd value
            raise TemplateRenderError(f"the chat template failed on the conversation: {exc!r}") from exc


def read_chat_template(model_dir: str | Path) -> ChatTemplate | None:
    """The chat template of a saved Hugging Face tokenizer directory, or None when it has none.

    Read the way transformers reads it, without transformers: the source from ``chat_template.jinja``
    (else the ``chat_template`` string of ``tokenizer_config.json``), the special tokens from
    ``tokenizer_config.json`` (a plain string, or an AddedToken object's ``content``)."""
    directory = Path(model_dir)
    config_path = directory / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateRenderError(f"{config_path} is unreadable: {exc}") from exc
    source = None
    if (directory / TEMPLATE_FILE).is_file():
        source = (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    if not source:
        return None
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return ChatTemplate(source, tokens)
