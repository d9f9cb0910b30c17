"""Batched generation: `model.generate` on every device, vLLM on CUDA when it is installed (docs/ARCHITECTURE.md, "Device and backends")."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lib.control.answer import stated_bounds
from lib.control.labels import grid_bounds


def generate_completions(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    answer_starts: Sequence[str] | None = None,
) -> list[str]:
    """The assistant's text for each chat prompt: greedy when temperature is 0, else sampled (seeded); with
    `answer_starts`, what follows each prompt's given start of an answer.

    Prompts are batched longest first, so each left-padded batch holds prompts of similar length (less
    padding to compute), and the answers come back in the prompts' order. The batches depend only on the
    prompts and batch_size, so the same call gives the same greedy answers.
    """
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"  # decoder-only models continue from the right end of each row
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    if answer_starts is not None:
        texts = [text + start for text, start in zip(texts, answer_starts, strict=True)]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    completions: list[str] = [""] * len(texts)
    model.eval()
    bar = tqdm(total=len(texts), unit="answer", file=sys.stderr, disable=not progress or None)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        with torch.no_grad():
            ids = model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        decoded = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(rows, decoded, strict=True):
            completions[i] = text
        bar.update(len(rows))
    bar.close()
    return completions


def vllm_generator(
    model_dir: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    gpu_memory_utilization: float = 0.8,
) -> Callable[[list[list[dict]]], list[str]]:
    """prompts -> answers through vLLM (CUDA only), the engine built once and reused for every call (MPC
    re-plans call it again and again); vLLM schedules the batches itself.

    model_dir must be a plain (merged) transformers folder: vLLM cannot load our LoRA run chains.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, seed=seed, gpu_memory_utilization=gpu_memory_utilization)
    # the engine's seed makes a run repeatable; a per-request seed would give every copy of one prompt the same
    # sample (vllm-project/vllm #3333, #7808), so best-of-k and pass@k would see k identical answers
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature)

    def generate(prompts: list[list[dict]]) -> list[str]:
        return [output.outputs[0].text for output in llm.chat(prompts, params, use_tqdm=True)]

    return generate


CONTROLS_TAG = "<CONTROLS>"


def expected_value_answerer(
    model, tokenizer, records: list[dict], max_new_tokens: int, batch_size: int, progress: bool = False
) -> Callable[[list[list[dict]]], list[str]]:
    """prompts -> `expected_value_completions` at the records' decimals, each control clipped to the bounds
    its prompt states (`stated_bounds`: a record's, an MPC re-plan's and a fresh problem's alike)."""
    decimals = max(r["decimals"] for r in records)
    return lambda prompts: expected_value_completions(
        model, tokenizer, prompts, decimals, max_new_tokens, batch_size, progress=progress,
        bounds=[stated_bounds(p) for p in prompts],
    )  # fmt: skip


def expected_value_completions(
    model,
    tokenizer,
    prompts: list[list[dict]],
    decimals: int,
    max_new_tokens: int,
    batch_size: int = 8,
    min_prob: float = 0.01,
    max_paths: int = 64,
    progress: bool = False,
    bounds: Sequence[tuple[float, float] | None] | None = None,
) -> list[str]:
    """The assistant's text for each chat prompt, with every number inside <CONTROLS> the mean of the model's
    own distribution over that number (projected onto the prompt's control bounds when `bounds` gives them,
    rounded to `decimals`), everything else greedy.

    Greedy decoding picks the likeliest digit one at a time; where the model is unsure of a control (its last
    digit spread over ten values), that mode can sit far from the mean of what the model would write. Here,
    for control k (the controls before it fixed), every way of writing it is followed token by token:
    tokens under `min_prob` and all but a prompt's `max_paths` likeliest paths are dropped, and a path ends
    at `decimals` decimals, a comma or a closing tag. The control is the probability-weighted mean of the
    ended paths' values, clipped to (u_min, u_max) where known (near an active bound the model puts mass
    past it, and the mean would land outside; the controls after it then follow the clipped value); the
    controls stop where the model's mass on ending them outweighs another number.
    Tokens before <CONTROLS> (a reasoning) follow the likeliest token, one path; the closing tag and what
    follows are greedy. Deterministic. Per control: one forward pass over the prompt and the answer so far,
    then one token per path and level on a KV cache (~7x greedy's time on the from-scratch models;
    docs/evaluation.md, "Expected-value decoding").
    """
    from tqdm import tqdm

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    answers = [""] * len(texts)
    model.eval()
    bar = tqdm(total=len(texts), unit="answer", file=sys.stderr, disable=not progress or None)
    for start in range(0, len(texts), batch_size):
        rows = list(range(start, min(start + batch_size, len(texts))))
        written = dict.fromkeys(rows, 0)  # controls fixed so far
        active = list(rows)
        while active:
            ended = _number_paths(
                model,
                tokenizer,
                texts,
                answers,
                written,
                active,
                decimals,
                min_prob,
                max_paths,
                max_new_tokens,
            )
            for i in list(active):
                leaves, end_mass = ended[i]
                mass = sum(leaf.mass for leaf in leaves)
                used = len(tokenizer(answers[i], add_special_tokens=False)["input_ids"])
                if mass <= end_mass or used >= max_new_tokens:
                    active.remove(i)
                    continue
                value = sum(leaf.value * leaf.mass for leaf in leaves) / mass
                if bounds and bounds[i]:  # the bounds on the printed grid: the rounded value stays inside
                    low, high = grid_bounds(*bounds[i], decimals)
                    value = min(max(value, low), high)
                likeliest = max(leaves, key=lambda leaf: leaf.mass)
                answers[i] = likeliest.before + _number_text(value, decimals)
                written[i] += 1
        left = {
            i: max_new_tokens - len(tokenizer(answers[i], add_special_tokens=False)["input_ids"])
            for i in rows
        }
        tails = generate_completions(
            model,
            tokenizer,
            [prompts[i] for i in rows],
            max(1, *left.values()),
            len(rows),
            answer_starts=[answers[i] for i in rows],
        )
        for i, tail in zip(rows, tails, strict=True):  # each answer within its own max_new_tokens
            ids, keep = tokenizer(tail, add_special_tokens=False)["input_ids"], max(0, left[i])
            answers[i] += tail if len(ids) <= keep else tokenizer.decode(ids[:keep], skip_special_tokens=True)
        bar.update(len(rows))
    bar.close()
    return answers


@dataclass
class _Path:
    """One way of writing the current control: its prompt, the answer's text so far, its probability."""

    problem: int
    text: str
    mass: float


@dataclass
class _Leaf:
    """A path that wrote the whole control: its value, mass and the answer's text before the number."""

    value: float
    mass: float
    before: str


def _number_paths(
    model, tokenizer, texts, answers, written, active, decimals, min_prob, max_paths, max_new_tokens
):
    """Per active prompt i: (the paths that wrote control written[i], the mass of paths that ended the
    controls instead). One forward pass over the prompts, then one token per path and level, on a KV cache
    whose rows follow the paths (a parent's row copied to each of its children)."""
    import torch

    roots = [tokenizer(texts[i] + answers[i], add_special_tokens=False)["input_ids"] for i in active]
    width = max(map(len, roots))
    ids = torch.full((len(roots), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(roots), width), dtype=torch.long)
    for row, seq in enumerate(roots):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    paths = [_Path(i, answers[i], 1.0) for i in active]
    leaves: dict[int, list[_Leaf]] = {i: [] for i in active}
    end_mass = dict.fromkeys(active, 0.0)
    cache, step = None, ids
    for _ in range(max_new_tokens):
        with torch.no_grad():
            out = model(
                input_ids=step.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1] :].to(model.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        cache, probs = out.past_key_values, torch.softmax(out.logits[:, -1].float(), -1).cpu()
        grown: list[tuple[_Path, int, int]] = []  # (child, parent row, token)
        for row, (path, p) in enumerate(zip(paths, probs, strict=True)):
            best = int(p.argmax())
            for token in sorted({best, *(p >= min_prob).nonzero().flatten().tolist()}):
                mass = path.mass * float(p[token])
                if token == tokenizer.eos_token_id:
                    end_mass[path.problem] += mass
                    continue
                text = path.text + tokenizer.decode([token])
                state, value, before = _control_state(text, written[path.problem], decimals)
                if state == "reasoning" and token == best or state == "writing":
                    grown.append((_Path(path.problem, text, mass), row, token))
                elif state == "written":
                    leaves[path.problem].append(_Leaf(value, mass, before))
                elif state == "ended":
                    end_mass[path.problem] += mass
        kept = []
        for i in active:  # each prompt keeps its max_paths likeliest
            kept += sorted((g for g in grown if g[0].problem == i), key=lambda g: -g[0].mass)[:max_paths]
        paths = [child for child, _, _ in kept]
        if not kept:
            break
        parents = torch.tensor([row for _, row, _ in kept])
        cache.batch_select_indices(parents.to(model.device))
        mask = torch.cat([mask[parents], torch.ones((len(kept), 1), dtype=torch.long)], dim=1)
        step = torch.tensor([[token] for _, _, token in kept])
    for path in paths:  # out of tokens: answers that never wrote control k
        end_mass[path.problem] += path.mass
    return {i: (leaves[i], end_mass[i]) for i in active}


_PARTIAL_NUMBER = re.compile(r"-?(\d+(\.\d*)?)?")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _control_state(text: str, k: int, decimals: int) -> tuple[str, float, str]:
    """Where an answer's text (a path of control k grown by one token) stands on control k: ("reasoning",
    -, -) before <CONTROLS>, ("writing", -, -) from the separator to the middle of control k, ("written",
    value, text before it) once it is whole, ("ended", -, -) when the controls closed before it, ("broken",
    -, -) for anything else."""
    if CONTROLS_TAG not in text:
        return "reasoning", 0.0, ""
    base = text.index(CONTROLS_TAG) + len(CONTROLS_TAG)
    body = text[base:]
    closed = "<" in body
    parts = body[: body.index("<")].split(",") if closed else body.split(",")
    if len(parts) <= k:  # no separator after control k - 1: the tag closed, or a digit went onto k - 1
        return ("ended" if closed else "broken"), 0.0, ""
    raw = parts[k]
    number = raw.strip()
    start = base + sum(len(part) + 1 for part in parts[:k]) + len(raw) - len(raw.lstrip())
    whole = len(parts) > k + 1 or closed
    if not whole and decimals > 0 and re.fullmatch(rf"-?\d+\.\d{{{decimals}}}", number):
        whole = True  # the last decimal is written: the model's format ends the number here
    if whole:
        if _NUMBER.fullmatch(number):
            return "written", float(number), text[:start]
        return ("ended" if closed and not number and len(parts) == k + 1 else "broken"), 0.0, ""
    return ("writing" if _PARTIAL_NUMBER.fullmatch(number) else "broken"), 0.0, ""


def _number_text(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text  # never "-0.00"
