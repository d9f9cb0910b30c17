"""Fuzzing the config loader: every shipped config (configs/, other tools' folders left out), mutated through
its file and through `key=value` overrides, must either be refused with exit 2, no traceback and a message
that names the offending key (or, where no key can be named, the file), or (a section given as `{}` or part
of a mapping, which merges into what is below it) resolve to a config that holds every key the schema
defines. The cases are generated deterministically; the fast test takes a fixed-seed sample of them (and a
handful through a real subprocess), the `slow` one takes them all.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, run_python

from lib.common.config import (
    MAX_DEPTH,
    find_configs,
    load_schema,
    main,
    read_config_file,
    resolve_config,
    schema_keys,
    schema_node,
)
from lib.common.errors import EXIT_USAGE, run_cli

SEED = 20240611
FAST_SAMPLE = 1000  # cases the fast test runs in-process (about 15 ms each on a busy 2-core CPU)
CONFIGS = find_configs([ROOT / "configs"])
PLACEHOLDER = "__FUZZ_PLACEHOLDER__"


@dataclass(frozen=True)
class Case:
    config: Path  # the shipped config it mutates
    kind: str  # the kind of mutation ("file wrong-type", "override deep", ...): the sample keeps each kind
    label: str  # what was mutated, for the failure report
    names: tuple[str, ...]  # the message must hold one of these (a key, or the file); empty: must resolve
    make: Callable[[], bytes] | None = None  # a mutated copy of the file (made only when the case runs)
    suffix: str = ""
    overrides: tuple[str, ...] = field(default=())

    @property
    def refused(self) -> bool:
        return bool(self.names)


# ---------------------------------------------------------------- what to mutate


def _types(node: dict) -> set[str]:
    kind = node.get("type", "string")
    return set(kind) if isinstance(kind, list) else {kind}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _is_wrong(value: Any, node: dict) -> bool:
    """True when the schema `node` refuses `value` by its type or enum (the candidates below are simple)."""
    kind, types = _json_type(value), _types(node)
    if kind == "integer" and "number" in types:
        kind = "number"
    allowed = kind in types or (kind == "number" and "integer" in types and float(value).is_integer())
    if not allowed:
        return True
    return "enum" in node and value not in node["enum"]


WRONG_CANDIDATES = ("text", 7, 2.5, True, [1, "x"], {"zz_unknown": 1}, None)


def _leaf_keys(schema: dict) -> list[str]:
    return list(schema_keys(schema))


def _sections(schema: dict) -> list[str]:
    return [k for k in schema_keys(schema) if "properties" in schema_node(schema, k)]


def _set(data: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return out


def _base(config: Path) -> dict:
    """The config file's own data with its `extends:` made absolute, so a copy elsewhere resolves alike."""
    data = read_config_file(config)
    parents = data.get("extends")
    if parents is not None:
        parents = [parents] if isinstance(parents, str) else parents
        data["extends"] = [str((config.parent / p).resolve()) for p in parents]
    return data


def _dump(data: dict, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False)


def _with_text(data: dict, dotted: str, value_text: str, suffix: str) -> str:
    """The file's text with `dotted` holding `value_text` verbatim (deep nesting no dumper could write)."""
    text = _dump(_set(data, dotted, PLACEHOLDER), suffix)
    quoted = json.dumps(PLACEHOLDER) if suffix == ".json" else PLACEHOLDER
    assert text.count(quoted) == 1
    return text.replace(quoted, value_text)


def _deep(depth: int, kind: str, suffix: str) -> str:
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    key = '"a"' if suffix == ".json" else "a"
    return f"{{{key}: " * depth + "1" + "}" * depth


def file_cases(config: Path) -> list[Case]:
    cases: list[Case] = []
    data = _base(config)
    schema = load_schema(resolve_config(config)["model_type"])
    suffix = config.suffix
    sections = _sections(schema)

    def add(kind: str, label: str, names: tuple[str, ...], make: Callable[[], str | bytes], suffix=suffix):
        def encoded() -> bytes:
            text = make()
            return text.encode() if isinstance(text, str) else text

        cases.append(Case(config, f"file {kind}", f"file {label}", names, encoded, suffix))

    for key in _leaf_keys(schema):
        node = schema_node(schema, key)
        for value in WRONG_CANDIDATES:
            if _is_wrong(value, node):
                add(
                    "wrong-type",
                    f"{key}={value!r}",
                    (key,),
                    lambda k=key, v=value: _dump(_set(data, k, v), suffix),
                )
        if _types(node) & {"number", "integer"}:
            for value in (float("nan"), float("inf"), float("-inf")):
                add(
                    "non-finite",
                    f"{key}={value}",
                    (key,),
                    lambda k=key, v=value: _dump(_set(data, k, v), suffix),
                )
        for depth, kind in ((MAX_DEPTH + 1, "list"), (300, "dict"), (5000, "list")):
            deep = _deep(depth, kind, suffix)
            add(
                "deep",
                f"{key} nested {depth} deep",
                (key,),
                lambda k=key, d=deep: _with_text(data, k, d, suffix),
            )
        if "." in key:  # a misspelt key under its section
            parent, _, leaf = key.rpartition(".")
            wrong = f"{parent}.{leaf[:-1]}"
            if schema_node(schema, wrong) is None:
                add(
                    "unknown-key",
                    f"unknown {wrong}",
                    (wrong,),
                    lambda w=wrong: _dump(_set(data, w, 1), suffix),
                )
    for section in ["", *sections]:
        prefix = f"{section}." if section else ""
        bogus = prefix + "bogus_key"
        add("unknown-key", f"unknown {bogus}", (bogus,), lambda b=bogus: _dump(_set(data, b, 1), suffix))
        # keys YAML 1.1 reads as booleans, numbers or null: the file is written as YAML, whatever it was
        for word in ("on", "yes", "off", "1", "~", "null", "3.5"):

            def text(p=prefix, w=word):
                return _dump(_set(data, p + PLACEHOLDER, 1), ".yaml").replace(PLACEHOLDER, w)

            add("non-string-key", f"non-string key {prefix}{word}", (f"'{word}'",), text, ".yaml")
        # a key given twice, in this section (or at the top level)
        first = next(iter(schema_node(schema, section)["properties"] if section else schema["properties"]))

        def duplicated(section=section, prefix=prefix, first=first):
            if suffix == ".json":
                dup = json.dumps({PLACEHOLDER: 1, first: 2})
                text = _with_text(data, section, dup, suffix) if section else None
                text = text or _dump({PLACEHOLDER: 1, **data}, suffix)
                return text.replace(json.dumps(PLACEHOLDER), json.dumps(first))
            text = _dump(_set(_set(data, prefix + PLACEHOLDER, 1), prefix + first, 2), suffix)
            return text.replace(PLACEHOLDER, first)

        add("duplicate-key", f"duplicate {prefix}{first}", (f"'{first}'",), duplicated)
        if section:  # a section as {} merges into what is below it: the result has every key
            add("section-merge", f"{section}={{}}", (), lambda s=section: _dump(_set(data, s, {}), suffix))
    encoded = _dump(data, suffix).encode()
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"):
        for at in sorted({0, encoded.find(b"\n") + 1, len(encoded) // 2, len(encoded)}):
            add(
                "bad-bytes",
                f"bytes {bad!r} at {at}",
                ("FILE",),
                lambda b=bad, a=at: encoded[:a] + b + encoded[a:],
            )
    return cases


def override_cases(config: Path) -> list[Case]:
    cases: list[Case] = []
    schema = load_schema(resolve_config(config)["model_type"])

    def add(kind: str, label: str, names: tuple[str, ...], *overrides: str) -> None:
        cases.append(Case(config, f"override {kind}", f"override {label}", names, overrides=overrides))

    for key in _leaf_keys(schema):
        node = schema_node(schema, key)
        types = _types(node)
        texts: list[tuple[str, str]] = []
        if "integer" in types:
            texts += [("wrong-type", t) for t in ("abc", "1.5", "[1]", "{}")]
            texts += [("non-finite", t) for t in ("nan", "inf")]
        elif "number" in types:
            texts += [("wrong-type", t) for t in ("abc", "[1]", "{}")]
            texts += [("non-finite", t) for t in ("nan", "inf", "-inf", "1e999")]
        if "boolean" in types:
            texts += [("wrong-type", t) for t in ("maybe", "2", "[]")]
        if "array" in types:
            items = node.get("items", {})
            texts += [("wrong-shape", t) for t in ("{}", '{"a": 1}', '"x"', "[[[1]]]")]
            texts += [("deep", "[" * 5000), ("deep", "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))]
            bad_items = "[1, NaN]" if _types(items) & {"number"} else '["a", "a", 7]'
            texts += [("wrong-type", bad_items)]
        if "object" in types:
            texts += [("wrong-shape", t) for t in ("[1]", "abc", "5")]
            texts += [("duplicate-key", '{"a": 1, "a": 2}'), ("unknown-key", '{"zz_unknown": 1}')]
            texts += [("non-finite", '{"x": NaN}'), ("deep", "{" * 5000)]
            texts += [("deep", "{" + '"a": {' * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 2))]
        if types == {"string"} or types == {"string", "null"}:
            if "enum" in node:
                texts += [("wrong-type", "nope"), ("wrong-type", "")]
            if "pattern" in node:
                texts += [("run-id", t) for t in ("..", ".", "/abs/path", "a/b", "-x", "x" * 200)]
            if node.get("minLength"):
                texts += [("wrong-type", "")]
        for kind, text in texts:
            add(kind, f"{key}={text[:40]}", (key,), f"{key}={text}")
        if "." in key:
            parent = key.rpartition(".")[0]
            add("unknown-key", f"{parent}.bogus_key", (f"{parent}.bogus_key",), f"{parent}.bogus_key=1")
    add("unknown-key", "bogus_key", ("bogus_key",), "bogus_key=1")
    for section in _sections(schema):  # a section as {} or part of a mapping merges into what is below it
        add("section-merge", f"{section}={{}}", (), f"{section}={{}}")
        first = next(iter(schema_node(schema, section)["properties"]))
        value = schema_node(schema, f"{section}.{first}").get("default")
        if value is not None:
            add("section-merge", f"{section}={{{first}: ...}}", (), f"{section}={json.dumps({first: value})}")
    return cases


def all_cases() -> list[Case]:
    return [case for config in CONFIGS for case in (*file_cases(config), *override_cases(config))]


# ---------------------------------------------------------------- running them


def _complete(cfg: dict, schema: dict) -> list[str]:
    """The schema keys (with a default, or sections) missing from a resolved config."""
    missing = []
    for key in schema_keys(schema):
        node = schema_node(schema, key)
        if "default" not in node and "properties" not in node:
            continue
        value: Any = cfg
        for part in key.split("."):
            value = value.get(part, PLACEHOLDER) if isinstance(value, dict) else PLACEHOLDER
        if value is PLACEHOLDER:
            missing.append(key)
    return missing


def _file_of(case: Case, folder: Path, index: int) -> Path:
    if case.make is None:
        return case.config
    path = folder / f"case{index}_{case.config.stem}{case.suffix}"
    path.write_bytes(case.make())
    return path


def _check(case: Case, file: Path, code: int, out: str, err: str) -> str | None:
    """None when the case behaved; else what went wrong."""
    output = out + err
    if "Traceback" in output:
        return f"traceback: {output[-800:]}"
    if not case.refused:
        if code != 0:
            return f"exit {code}, expected 0: {err[-400:]}"
        cfg = json.loads(out)
        missing = _complete(cfg, load_schema(cfg["model_type"]))
        return f"resolved without {missing}" if missing else None
    if code != EXIT_USAGE:
        return f"exit {code}, expected 2: {output[-400:]}"
    names = tuple(str(file) if n == "FILE" else n for n in case.names)
    if not any(n in err for n in names):
        return f"message names none of {names}: {err[-400:]}"
    if len(err.strip().splitlines()) > 2:  # `error: ...` and `fix: ...`, nothing else
        return f"more than one paragraph: {err[-400:]}"
    return None


def run_in_process(cases: list[Case], folder: Path, capsys) -> list[str]:
    failures = []
    for index, case in enumerate(cases):
        file = _file_of(case, folder, index)
        try:
            code = run_cli(main, ["show", str(file), *case.overrides])
        except BaseException as exc:  # noqa: BLE001 (a bug: record it, with the case, and go on)
            code, problem = None, f"raised {type(exc).__name__}: {exc}"
        else:
            problem = None
        out, err = capsys.readouterr()
        problem = problem or _check(case, file, code, out, err)
        if problem:
            failures.append(f"{case.config.relative_to(ROOT)} {case.label}: {problem}")
    return failures


def _sample(cases: list[Case], count: int) -> list[Case]:
    """A fixed-seed sample with the same share of each kind of mutation, and at least one case of each kind
    for each config."""
    rng = random.Random(SEED)
    groups: dict[tuple[Path, str], list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault((case.config, case.kind), []).append(index)
    chosen = {rng.choice(group) for group in groups.values()}
    rest = [i for i in range(len(cases)) if i not in chosen]
    chosen |= set(rng.sample(rest, max(0, min(count - len(chosen), len(rest)))))
    return [cases[i] for i in sorted(chosen)]


def test_the_shipped_configs_are_fuzzed():
    assert len(CONFIGS) >= 10 and not any("accelerate" in p.parts for p in CONFIGS)


def test_fuzzed_configs_exit_2_naming_the_key_and_never_a_traceback(tmp_path, capsys):
    cases = all_cases()
    sample = _sample(cases, FAST_SAMPLE)
    failures = run_in_process(sample, tmp_path, capsys)
    refused = sum(c.refused for c in sample)
    print(
        f"config fuzz: {len(sample)} of {len(cases)} cases ({refused} refused, {len(sample) - refused} merged)"
    )
    assert not failures, f"{len(failures)} of {len(sample)} cases failed:\n" + "\n".join(failures[:30])


@pytest.mark.slow
def test_every_fuzzed_config_exits_2_naming_the_key(tmp_path, capsys):
    cases = all_cases()
    failures = run_in_process(cases, tmp_path, capsys)
    print(f"config fuzz (all): {len(cases)} cases")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:30])


def test_a_handful_through_a_real_subprocess(tmp_path):
    """The same checks on the command a user types, one case of each kind that once gave a traceback."""
    control, blt = ROOT / "configs/smollm2/cpu.yaml", ROOT / "configs/blt/entropy_cpu.json"
    cases = [
        Case(control, "file", "non-UTF-8", ("FILE",), lambda: b"seed: 3\n# caf\xe9\n", ".yaml"),
        Case(control, "file", "on: key", ("'on'",), lambda: b"on: 1\n", ".yaml"),
        Case(
            control,
            "file",
            "deep list",
            ("seed",),
            lambda: ("seed: " + "[" * 5000 + "]" * 5000).encode(),
            ".yaml",
        ),
        Case(
            blt,
            "file",
            "NaN",
            ("learning_rate",),
            lambda: b'{"model_type": "blt", "learning_rate": NaN}',
            ".json",
        ),
        Case(
            blt,
            "file",
            "duplicate",
            ("'seed'",),
            lambda: b'{"model_type": "blt", "seed": 1, "seed": 2}',
            ".json",
        ),
        Case(
            control,
            "override",
            "200.0",
            ("generate.train_samples",),
            overrides=("generate.train_samples=2.5",),
        ),
        Case(
            control,
            "override",
            "list as map",
            ("model.lora.target_modules",),
            overrides=("model.lora.target_modules={}",),
        ),
        Case(control, "override", "run id path", ("run.run_id",), overrides=("run.run_id=..",)),
        Case(
            blt,
            "override",
            "deep",
            ("analysis_thresholds",),
            overrides=("analysis_thresholds=" + "[" * 5000,),
        ),
    ]
    for index, case in enumerate(cases):
        file = _file_of(case, tmp_path, index)
        result = run_python(["-m", "lib.common.config", "show", str(file), *case.overrides])
        assert _check(case, file, result.returncode, result.stdout, result.stderr) is None, case.label
    merged = run_python(["-m", "lib.common.config", "show", str(control), "model={}"])
    assert merged.returncode == 0 and json.loads(merged.stdout)["model"]["name"] == "embedded"


def test_validate_reports_each_bad_file_and_goes_on(tmp_path, capsys):
    """`validate FOLDER` with one file of each kind: each bad one is FAILED, the good ones ok, exit 2."""
    kinds: dict[str, Case] = {}
    for case in all_cases():
        if case.make is not None:
            kinds.setdefault(case.kind, case)
    chosen = list(kinds.values())
    for index, case in enumerate(chosen):
        _file_of(case, tmp_path, index)
    good = sum(not c.refused for c in chosen)
    assert run_cli(main, ["validate", str(tmp_path)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert f"validated {len(chosen)} config(s): {good} ok, {len(chosen) - good} failed" in out
    assert out.count("FAILED  ") == len(chosen) - good
