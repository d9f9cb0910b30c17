"""Validating a merged config against its schema, and the messages that name the key and the fix.

An unknown key fails with its dotted path and the closest valid name; a wrong type names the key, the
expected type and the value.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence

import jsonschema

from lib.common.config.files import type_name
from lib.common.config.schema import schema_keys, schema_node
from lib.common.errors import ConfigError


def closest_key(key: str, schema: Mapping) -> str | None:
    """The valid dotted key nearest to `key`: a sibling first, then the same name elsewhere."""
    parent, _, leaf = key.rpartition(".")
    parent_node = schema_node(schema, parent) if parent else schema
    siblings = list((parent_node or {}).get("properties", {}))
    match = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if match:
        return f"{parent}.{match[0]}" if parent else match[0]
    every = list(schema_keys(schema))
    by_leaf = {k: k.rpartition(".")[2] for k in every}
    leaf_match = difflib.get_close_matches(leaf, list(set(by_leaf.values())), n=1, cutoff=0.75)
    if leaf_match:
        return next(k for k, v in by_leaf.items() if v == leaf_match[0])
    match = difflib.get_close_matches(key, every, n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_error(key: str, schema: Mapping, source: str) -> ConfigError:
    """The error for a key the schema does not define: the closest valid name and the keys beside it."""
    suggestion = closest_key(key, schema)
    parent = key.rpartition(".")[0]
    parent_node = schema_node(schema, parent) if parent else schema
    valid = ", ".join(parent_node.get("properties", {})) if parent_node else ""
    hint = f"did you mean '{suggestion}'?" if suggestion else "check the spelling."
    where = f" under '{parent}'" if parent else ""
    return ConfigError(
        f"{source}: unknown key '{key}'; {hint}",
        fix=f"valid keys{where}: {valid}. The schema ({schema.get('title', '')}) documents each one.",
    )


def validate_config(
    cfg: Mapping, schema: Mapping, source: str, cli_keys: Sequence[str] = (), cli: str = "command line"
) -> None:
    """Validate a merged config; the first problem becomes a ConfigError that names key and fix (and the
    command line as its source when one of `cli_keys`, the keys overrides set, is or holds that key)."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if not errors:
        return
    error = errors[0]
    path = ".".join(str(p) for p in error.absolute_path)
    if any(path == k or path.startswith(k + ".") for k in cli_keys):
        source = cli
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        raise unknown_key_error(f"{path}.{extra[0]}" if path else extra[0], schema, source)
    node = schema_node(schema, path) if path else schema
    description = (node or {}).get("description", "")
    if error.validator == "type":
        expected = (
            error.validator_value
            if isinstance(error.validator_value, str)
            else " or ".join(error.validator_value)
        )
        message = (
            f"{source}: key '{path}' expects {expected}, got {type_name(error.instance)} {error.instance!r}."
        )
    elif error.validator == "enum":
        choices = ", ".join(map(json.dumps, error.validator_value))
        message = f"{source}: key '{path}' must be one of {choices}; got {error.instance!r}."
    elif error.validator == "required":
        message = f"{source}: {error.message} (at '{path or 'top level'}')."
    elif error.validator == "pattern":
        message = f"{source}: key '{path}' must match {error.validator_value}; got {error.instance!r}."
    else:
        message = f"{source}: key '{path}': {error.message}."
    more = f" ({len(errors) - 1} more problem(s) after this one.)" if len(errors) > 1 else ""
    raise ConfigError(message + more, fix=f"'{path}': {description}" if description else "")


def check_relations(cfg: Mapping, schema_name: str, source: str) -> None:
    """What one key's schema cannot say because it ties keys together, checked when the config is resolved,
    before any model loads (a late failure costs the minutes spent loading)."""
    if schema_name != "control":
        return
    for stage in ("sft", "grpo", "corrected", "rft"):
        section = cfg[stage]
        if section["lr_scheduler_type"] != "warmup_stable_decay":
            continue
        if section["max_steps"] < 1:
            raise ConfigError(
                f"{source}: {stage}.lr_scheduler_type is warmup_stable_decay, which decays over the last "
                f"{stage}.decay_ratio of {stage}.max_steps, but {stage}.max_steps is {section['max_steps']} "
                "(run by epochs), so the decay has no length.",
                fix=f"set {stage}.max_steps to the number of optimiser steps, or use "
                f"{stage}.lr_scheduler_type=cosine.",
            )
        warm, decay = section["warmup_ratio"], section["decay_ratio"]
        if warm + decay > 1:
            raise ConfigError(
                f"{source}: {stage}.warmup_ratio + {stage}.decay_ratio = {warm} + {decay} > 1: the "
                "warmup_stable_decay schedule would start its decay before the warm-up ends and jump.",
                fix=f"lower {stage}.decay_ratio (e.g. {stage}.decay_ratio=0.2) or {stage}.warmup_ratio.",
            )
    evaluation = cfg["eval"]
    if evaluation["decoding"] == "expected_value" and evaluation["temperature"] > 0:
        # checked when any tool resolves the config, not in main_eval alone: a pipeline should not train for an
        # hour and then fail its evaluation phase on this setting
        raise ConfigError(
            f"{source}: eval.decoding is expected_value (--decoding), which writes each control as the mean of "
            f"the model's distribution, deterministically, but eval.temperature is {evaluation['temperature']} "
            "(--temperature), which asks for sampled answers.",
            fix="drop the temperature (expected-value decoding needs eval.temperature=0), or use "
            "eval.decoding=token (--decoding token).",
        )
    grpo = cfg["grpo"]
    # TRL groups the completions of one prompt within one generation batch: per-device batch x processes x
    # accumulation steps completions, which must hold whole groups of num_generations. WORLD_SIZE is set by
    # torchrun / accelerate launch in each process (one process when it is absent).
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    batch = grpo["per_device_train_batch_size"] * processes * grpo["gradient_accumulation_steps"]
    if batch % grpo["num_generations"]:
        raise ConfigError(
            f"{source}: grpo.per_device_train_batch_size x processes x grpo.gradient_accumulation_steps = "
            f"{grpo['per_device_train_batch_size']} x {processes} x {grpo['gradient_accumulation_steps']} = {batch} "
            f"completions a step, which is not a whole number of groups of grpo.num_generations = "
            f"{grpo['num_generations']} (TRL would stop with a ValueError after the model loaded).",
            fix=f"make grpo.per_device_train_batch_size a multiple of {grpo['num_generations']} (e.g. "
            f"grpo.per_device_train_batch_size={grpo['num_generations'] * 2}), or change grpo.num_generations.",
        )
