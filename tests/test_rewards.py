"""GRPO rewards: bounded and finite for any text, 1 for the exact label, each completion scored against
its own instance (never the first prompt's), and the config's weights and scales reach them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.common.config import resolve_config
from lib.control.answer import format_answer, format_controls
from lib.control.references import solve_reference
from lib.control.systems import get_system
from lib.llm.rewards import REWARDS, reward_functions


@pytest.fixture(scope="module")
def instances():
    """Two double-integrator instances and one Van der Pol instance with their exact labels."""
    out = []
    for name, x0 in [("double_integrator", [[0.5, -0.3], [-0.7, 0.2]]), ("van_der_pol", [[0.4, -0.2]])]:
        system = get_system(name)
        ref = solve_reference(system, np.array(x0))
        for i, x in enumerate(x0):
            answer = format_answer(system, np.array(x), ref.u_label[i], ref.J[i])
            out.append({"system": name, "x0": x, "J_opt": float(ref.J[i]), "J_floor": 0.01, "answer": answer})
    return out


def columns(batch):
    return {k: [r[k] for r in batch] for k in ("system", "x0", "J_opt", "J_floor")}


def call(name, completions, batch):
    return REWARDS[name]([[]] * len(completions), completions, **columns(batch))


def test_exact_labels_earn_every_reward(instances):
    completions = [[{"role": "assistant", "content": r["answer"]}] for r in instances]  # TRL's chat format
    for name in ("format", "feasibility", "optimality"):
        assert call(name, completions, instances) == pytest.approx([1.0] * len(instances), abs=0.01), name
    # the optimum trades the terminal error against control effort, so it stops near (not at) the target
    assert min(call("terminal", completions, instances)) > 0.9


def test_each_completion_is_scored_against_its_own_instance(instances):
    first, second = instances[0], instances[1]
    # the first instance's answer, given for both prompts: right for the first, wrong for the second
    rewards = call("optimality", [first["answer"], first["answer"]], [first, second])
    assert rewards[0] > 0.95 and rewards[1] < 0.5


def test_out_of_bounds_answers_earn_no_optimality_and_less_feasibility(instances):
    di = instances[0]
    u = np.full(50, 3.5)  # beyond |u| <= 3
    text = f"<REASONING>push</REASONING><CONTROLS>{format_controls(u)}</CONTROLS>"
    assert call("optimality", [text], [di]) == [0.0]
    assert call("feasibility", [text], [di]) == [pytest.approx(math.exp(-0.5 / 0.1))]
    assert call("format", [text], [di]) == [1.0]


def test_format_reward_levels(instances):
    di = instances[0]
    assert call("format", ["<REASONING>x</REASONING><CONTROLS>1, 2</CONTROLS>"], [di]) == [
        0.25
    ]  # wrong count
    assert call("format", ["<CONTROLS>1</CONTROLS><REASONING>x</REASONING>"], [di]) == [0.0]  # wrong order
    assert call("format", ["no tags at all"], [di]) == [0.0]


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.characters(), max_size=400)
    | st.builds(
        lambda values: "<REASONING>r</REASONING><CONTROLS>" + ", ".join(values) + "</CONTROLS>",
        st.lists(
            st.sampled_from(["1e308", "-1e308", "nan", "inf", "0.5", "3", "-2.99", "1e5", "abc", ""]),
            min_size=50,
            max_size=50,
        ),
    )
)
def test_rewards_are_finite_and_bounded_for_any_text(text):
    batch = [{"system": "van_der_pol", "x0": [0.4, -0.2], "J_opt": 3.0, "J_floor": 0.03}]
    for name in REWARDS:
        value = call(name, [text], batch)[0]
        assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, text[:80])


def test_config_weights_and_scales_reach_the_functions(instances):
    cfg = resolve_config(None, ["grpo.rewards.terminal=0", "grpo.optimality_sigma=0.01"])
    functions, weights = reward_functions(cfg["grpo"])
    assert [f.__name__ for f in functions] == ["format_reward", "feasibility_reward", "optimality_reward"]
    assert weights == [1.0, 1.0, 2.0]
    # a 5% worse answer: exp(-0.05 / 0.01) with the configured sigma, not the default 0.1
    di = instances[0]
    system = get_system("double_integrator")
    optimal = solve_reference(system, np.array([di["x0"]]))
    u = optimal.u[0].copy()
    u[20:] *= 0.5
    u = np.round(u, 6)  # what the text below prints
    from lib.control.metrics import evaluate_controls

    gap = evaluate_controls(system, np.array([di["x0"]]), u[None], np.array([di["J_opt"]]), 0.01).gap[0]
    text = f"<REASONING>r</REASONING><CONTROLS>{format_controls(u, 6)}</CONTROLS>"
    value = functions[2]([[]], [text], **columns([di]))[0]
    assert value == pytest.approx(math.exp(-gap / 0.01), rel=1e-6)
