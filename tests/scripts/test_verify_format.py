"""verify_grpo_format: the per-check rates on crafted answers, and real generation from a (tiny) model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import load_script

from lib.common.errors import run_cli
from lib.control.answer import FORMAT_CHECKS, format_checks, format_controls
from lib.control.systems import get_system

DI = get_system("double_integrator")  # 50 controls, |u| <= 3


def answer(values) -> str:
    return f"<REASONING>r</REASONING><CONTROLS>{format_controls(np.asarray(values, dtype=float))}</CONTROLS>"


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        (answer(np.zeros(50)), set()),
        (answer(np.zeros(50)).replace("</REASONING>", ""), {"reasoning_tags", "proper_order"}),
        (answer(np.zeros(49)), {"exact_control_count", "controls_within_bounds"}),
        (answer(np.full(50, 3.5)), {"controls_within_bounds"}),
        (
            "<CONTROLS>1, 2</CONTROLS><REASONING>r</REASONING>",
            {"proper_order", "exact_control_count", "controls_within_bounds"},
        ),
        ("junk", set(FORMAT_CHECKS)),
        (
            "<REASONING>r</REASONING><CONTROLS>" + ", ".join(["x"] * 50) + "</CONTROLS>",
            {"parses_as_numbers", "exact_control_count", "controls_within_bounds"},
        ),
    ],
)
def test_each_check_fails_for_its_own_reason(text, failed):
    checks = format_checks(text, DI)
    assert {name for name, ok in checks.items() if not ok} == failed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lib.control.answer import build_prompt
    from lib.llm.models import build_tiny_model

    corpus = [m["content"] for m in build_prompt(DI, np.array([0.1, -0.2]))] + [answer(np.zeros(50))] * 5
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus)


def test_real_generation_reports_rates_saves_every_answer_and_sets_the_exit_status(tiny, tmp_path, capsys):
    """The old script name runs main_eval's format mode: --num-tests and --min-score are its shorthands."""
    main = load_script("verify_grpo_format").main
    args = ["--model-path", str(tiny), "--num-tests", "3", "--max-new-tokens", "8", "--output-dir", str(tmp_path),
            "--system", "double_integrator", "device.type=cpu"]  # fmt: skip
    assert run_cli(main, args) == 0  # --min-score 0: always passes
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert document["context"]["records"] == 3 and document["context"]["eval_mode"] == "format"
    (entry,) = document["models"].values()
    assert set(entry["format_rates"]) == set(FORMAT_CHECKS) and entry["passed"]
    assert entry["score"] == pytest.approx(sum(entry["format_rates"].values()) / len(FORMAT_CHECKS))
    answers = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all("completion" in a for a in answers)
    assert not any(all(a["checks"].values()) for a in answers)  # 8 tokens cannot hold 50 controls
    assert "overall" in capsys.readouterr().out
    assert run_cli(main, [*args, "--min-score", "0.9"]) == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["context"]["min_format_score"] == 0.9


def test_without_a_dataset_or_a_system_the_format_check_says_what_it_needs(tiny, tmp_path):
    main = load_script("verify_grpo_format").main
    assert run_cli(main, ["--model-path", str(tiny), "--output-dir", str(tmp_path)]) == 2


def test_unknown_dataset_exits_2(tiny, tmp_path):
    main = load_script("verify_grpo_format").main
    assert run_cli(main, ["--model-path", str(tiny), "--dataset", "nope", "--output-dir", str(tmp_path)]) == 2
