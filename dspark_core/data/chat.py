"""Rendering conversations to token ids, with or without a chat template, and the assistant-token mask."""

from __future__ import annotations

from dspark_core.errors import DsparkError
from dspark_core.models.target import TargetModel

_SENTINEL = "\uE000DSPARK_USER_TURN\uE000"


def _template_kwargs(target: TargetModel) -> dict:
    # Non-thinking mode where the template has one (Qwen3-style `enable_thinking`).
    template = target.tokenizer.chat_template or ""
    return {"enable_thinking": False} if "enable_thinking" in template else {}


def render_ids(target: TargetModel, messages: list[tuple[str, str]], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of a conversation. Without a chat template (base models) the turns are joined as plain text."""
    if target.has_chat_template:
        text = target.tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **_template_kwargs(target),
        )
        return list(target.tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(content for _, content in messages)
    return list(target.tokenizer(text)["input_ids"])


def user_turn_prefix(target: TargetModel) -> list[int]:
    """The chat template's tokens up to where a user's message begins (for Magpie-style self-generation)."""
    if not target.has_chat_template:
        raise DsparkError(
            f"self-generated prompts need a chat template and {target.spec!r} has none; use a JSONL file or a "
            f"Hugging Face dataset as the prompt source"
        )
    text = target.tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], add_generation_prompt=False, tokenize=False, **_template_kwargs(target)
    )
    return list(target.tokenizer(text[: text.index(_SENTINEL)], add_special_tokens=False)["input_ids"])


def tokenize_with_assistant_mask(
    target: TargetModel,
    messages: list[tuple[str, str]],
    max_length: int | None = None,
    last_response_ids: list[int] | None = None,
) -> tuple[list[int], list[int]]:
    """(ids, mask) for a full conversation; mask is 1 on assistant tokens up to and including the end-of-turn
    token, 0 elsewhere. Spans are found by rendering growing prefixes of the conversation.

    `last_response_ids`: the exact tokens the target generated for the final assistant turn. They replace
    that turn's re-tokenized text, so the sequence is exactly what the target saw and produced (earlier turns
    were fed to it as rendered text, so rendering them is exact already)."""
    if last_response_ids is not None:
        last = max(i for i, (role, _) in enumerate(messages) if role == "assistant")
        ids, mask = tokenize_with_assistant_mask(target, messages[:last], max_length=None)
        prompt = render_ids(target, messages[:last], add_generation_prompt=True)
        if prompt[: len(ids)] != ids:
            raise DsparkError(f"the chat template of {target.spec!r} is not prefix-consistent; cannot build the sequence")
        ends = [k for k, token in enumerate(last_response_ids) if token in target.eos_token_ids]
        supervised = ends[0] + 1 if ends else len(last_response_ids)
        response = list(last_response_ids[:supervised])
        mask = mask + [0] * (len(prompt) - len(ids)) + [1] * len(response)
        ids = prompt + response
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        return ids, mask
    ids: list[int] = []
    mask: list[int] = []
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before = render_ids(target, messages[:index], add_generation_prompt=True)
        after = render_ids(target, messages[: index + 1], add_generation_prompt=False)
        if after[: len(before)] != before or before[: len(ids)] != ids:
            raise DsparkError(
                f"the chat template of {target.spec!r} is not prefix-consistent, so assistant tokens cannot be "
                f"located; use a model whose template renders conversations incrementally"
            )
        span = after[len(before):]
        # Supervise up to the end-of-turn token; template formatting after it (e.g. "\n") is never generated.
        ends = [k for k, token in enumerate(span) if token in target.eos_token_ids]
        supervised = ends[-1] + 1 if ends else len(span)
        mask.extend([0] * (len(before) - len(ids)) + [1] * supervised + [0] * (len(span) - supervised))
        ids = after
    if target.has_chat_template:
        full = render_ids(target, messages, add_generation_prompt=False)
        if full[: len(ids)] == ids:  # trailing non-assistant turns
            mask.extend([0] * (len(full) - len(ids)))
            ids = full
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, mask


def tokenize_conversations(target: TargetModel, conversations: list[dict], max_length: int) -> list[dict]:
    """Regenerated conversations as training sequences: {"id", "split", "ids", "mask"} for each one with assistant
    tokens to learn from (the target's exact response tokens where recorded; cut to `max_length`)."""
    samples = []
    for conversation in conversations:
        messages = [(m["role"], m["content"]) for m in conversation["messages"]]
        exact = conversation.get("response_ids")
        ids, mask = tokenize_with_assistant_mask(target, messages, max_length=min(max_length, target.max_context),
                                                 last_response_ids=exact[-1] if exact else None)
        if any(mask):
            samples.append({"id": conversation["id"], "split": conversation.get("split", "train"), "ids": ids,
                            "mask": mask})
    return samples
