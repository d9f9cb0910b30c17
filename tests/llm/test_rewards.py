"""GRPO rewards: bounded and finite for any text, 1 for the exact label, each completion scored against
its own instance (never the first prompt's), and the config's weights and scales reach them. The shared
path (each batch parsed and simulated once, for all four functions) gives exactly the direct per-function
rewards, never another batch's, and J_zero from the dataset column is the simulated one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import load_script
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.common.config import resolve_config
from lib.control.answer import format_answer, format_controls, parse_controls
from lib.control.metrics import evaluate_controls, zero_control_cost
from lib.control.references import solve_reference
from lib.control.systems import get_system
from lib.llm import rewards
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
    keys = ("system", "x0", "J_opt", "J_floor") + (("J_zero",) if all("J_zero" in r for r in batch) else ())
    return {k: [r[k] for r in batch] for k in keys}


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
    gap = evaluate_controls(system, np.array([di["x0"]]), u[None], np.array([di["J_opt"]]), 0.01).gap[0]
    text = f"<REASONING>r</REASONING><CONTROLS>{format_controls(u, 6)}</CONTROLS>"
    value = functions[2]([[]], [text], **columns([di]))[0]
    assert value == pytest.approx(math.exp(-gap / 0.01), rel=1e-6)


def test_log_gap_gates_failures_and_ranks_far_answers_by_decades(instances):
    di = instances[0]
    system = get_system("double_integrator")
    optimal = solve_reference(system, np.array([di["x0"]])).u[0]
    texts, gaps = [], []
    for scale in (1.0, 0.9, 0.6, 0.2, 0.0):  # from the optimum towards doing nothing
        u = np.round(optimal * scale, 6)
        texts.append(f"<REASONING>r</REASONING><CONTROLS>{format_controls(u, 6)}</CONTROLS>")
        gaps.append(
            evaluate_controls(system, np.array([di["x0"]]), u[None], np.array([di["J_opt"]]), 0.01).gap[0]
        )
    got = call("log_gap", texts, [di] * len(texts))
    assert got[0] == pytest.approx(1.0)
    # gaps grow, rewards fall strictly, and the last two (gaps of order 100%) still differ by a usable amount,
    # where exp(-gap / 0.1) gives both ~0
    assert np.all(np.diff(gaps) > 0) and np.all(np.diff(got) < 0) and gaps[-2] > 0.5
    assert got[-2] - got[-1] > 0.01 and call("optimality", texts[-2:], [di, di]) == pytest.approx(
        [0, 0], abs=1e-3
    )
    assert got == pytest.approx(direct_log_gap(texts, [di] * len(texts)))
    outside = f"<REASONING>r</REASONING><CONTROLS>{format_controls(np.full(50, 3.5))}</CONTROLS>"
    assert call("log_gap", [outside, "no answer"], [di, di]) == [0.0, 0.0]  # below every feasible answer
    assert min(got) >= 0.5


def test_log_gap_decades_reach_the_function(instances):
    cfg = resolve_config(None, ["grpo.rewards.log_gap=1", "grpo.log_gap_decades=2"])
    functions, weights = reward_functions(cfg["grpo"])
    assert functions[-1].__name__ == "log_gap_reward" and weights[-1] == 1.0
    di = instances[0]
    u = np.round(solve_reference(get_system("double_integrator"), np.array([di["x0"]])).u[0] * 0.6, 6)
    text = f"<REASONING>r</REASONING><CONTROLS>{format_controls(u, 6)}</CONTROLS>"
    assert functions[-1]([[]], [text], **columns([di])) == pytest.approx(
        direct_log_gap([text], [di], decades=2)
    )


# ---------------------------------------------------------------------------------------------------------
# The shared path: one parse and one simulation per batch, reused by every reward function of the step


def direct_log_gap(completions, batch, decades=4.0):
    """log_gap_reward from its definition, one answer at a time: parse, simulate, the clipped decades."""
    out = []
    for completion, r in zip(completions, batch, strict=True):
        text = completion if isinstance(completion, str) else completion[0]["content"]
        system = get_system(r["system"])
        parsed = parse_controls(text, system.steps)
        if not parsed.ok:
            out.append(0.0)
            continue
        m = evaluate_controls(system, np.array([r["x0"]]), parsed.values[None], np.array([r["J_opt"]]),
                              r["J_floor"])  # fmt: skip
        if not m.feasible[0]:
            out.append(0.0)
            continue
        score = 1 - math.log10(max(m.gap[0], 0.001) / 0.001) / decades
        out.append(0.5 + 0.5 * min(max(score, 0.0), 1.0))
    return out


def direct_rewards(name, completions, batch, sigma=0.1, scale=0.1):
    """The rewards computed directly, nothing cached: the per-function path as it was before the shared one,
    which scripts/bench/rewards.py keeps as its baseline (log_gap, newer than it, from its definition)."""
    if name == "log_gap":
        return direct_log_gap(completions, batch)
    baseline = {f.__name__.removeprefix("baseline_"): f for f in load_script("bench/rewards").BASELINE}
    cols = columns(batch)
    scales = {"optimality_sigma": sigma, "terminal_scale": scale}
    return baseline[f"{name}_reward"](None, completions, **cols, **scales)


@pytest.fixture(scope="module")
def pool(instances):
    """Instances of three systems (with J_zero, as TRL passes it) and, per instance, a variety of texts."""
    system = get_system("double_integrator_short")
    x0 = np.array([[0.6, -0.4], [-0.3, 0.5]])
    ref = solve_reference(system, x0)
    short = [
        {
            "system": system.name,
            "x0": x.tolist(),
            "J_opt": float(ref.J[i]),
            "J_floor": 0.02,
            "answer": format_answer(system, x, ref.u_label[i], ref.J[i]),
        }
        for i, x in enumerate(x0)
    ]
    out = []
    for r in instances + short:
        s = get_system(r["system"])
        out.append(r | {"J_zero": float(zero_control_cost(s, np.array([r["x0"]]))[0])})
    return out


def _texts(record, rng):
    """Exact, perturbed, out-of-bounds, truncated, wrong-count and tag-less answers for one instance."""
    s = get_system(record["system"])
    u = parse_controls(record["answer"], s.steps).values
    wrap = "<REASONING>r</REASONING><CONTROLS>{}</CONTROLS>".format
    return [
        record["answer"],
        wrap(format_controls(np.clip(u + rng.normal(0, 0.2, u.shape), s.u_min, s.u_max))),
        wrap(format_controls(u * 2 + np.sign(u) * s.u_max)),
        record["answer"][: int(rng.integers(1, len(record["answer"])))],
        wrap(format_controls(u[:-1])),
        "u = " + format_controls(u),
    ]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_shared_path_gives_exactly_the_direct_rewards(pool, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    size = data.draw(st.integers(1, 12))
    batch = [
        pool[i] for i in data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=size, max_size=size))
    ]
    texts = [_texts(r, rng)[int(rng.integers(6))] for r in batch]
    completions = [[{"role": "assistant", "content": t}] if rng.random() < 0.5 else t for t in texts]
    with_zero = data.draw(st.booleans())
    cols = columns(batch) if with_zero else {k: v for k, v in columns(batch).items() if k != "J_zero"}
    functions, _ = reward_functions(resolve_config(None, ["grpo.optimality_sigma=0.05"])["grpo"])
    for function in functions:  # as TRL: one after the other, same batch
        got = function([[]] * len(completions), completions, **cols)
        name = function.__name__.removesuffix("_reward")
        assert got == direct_rewards(name, completions, batch, sigma=0.05), name
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in got)


def test_same_texts_in_another_batch_are_scored_against_their_own_instances(pool):
    a, b = pool[0], pool[1]  # two double-integrator instances
    texts = [a["answer"], b["answer"], a["answer"][:200]]
    first, second = [a, a, b], [b, b, a]  # the same texts, other x0 / J_opt / J_zero
    for batch in (first, second, first, second):
        for name in REWARDS:
            expected = direct_rewards(name, texts, batch)
            # log_gap's reference simulates one answer at a time: the same sums, to the last bit or so
            if name == "log_gap":
                expected = pytest.approx(expected, abs=1e-12)
            assert call(name, texts, batch) == expected, name
    assert call("optimality", texts[:1], first[:1]) != call("optimality", texts[:1], second[:1])


def test_a_batch_is_scored_once_and_the_cache_stays_small(pool, monkeypatch):
    computed = []
    original = rewards._compute_batch
    monkeypatch.setattr(rewards, "_compute_batch", lambda *a: computed.append(1) or original(*a))
    rewards.clear_batch_cache()
    batch = pool[:3]
    completions = [[{"role": "assistant", "content": r["answer"]}] for r in batch]
    for name in REWARDS:
        call(name, completions, batch)
    assert len(computed) == 1  # every function, one parse and simulation
    cols = {k: v for k, v in columns(batch).items() if k != "system"}
    shared = rewards.score_batch(completions, columns(batch)["system"], **cols)
    with pytest.raises(ValueError):  # what later calls reuse cannot be changed by a caller
        shared.metrics.gap[0] = 0.0
    completions[0][0]["content"] = batch[1]["answer"]  # the same list, changed in place: scored afresh
    assert call("optimality", completions, batch) == direct_rewards("optimality", completions, batch)
    assert len(computed) == 2
    for r in pool:
        call("terminal", [r["answer"]], [r])
    assert len(rewards._batch_cache) <= rewards.BATCH_CACHE_SIZE == 2


def test_j_zero_column_is_the_simulated_cost_of_doing_nothing(instances):
    from lib.control.dataset import record_lines

    for name in ("double_integrator", "double_integrator_short"):
        system = get_system(name)
        x0 = np.array([[0.5, -0.3], [-0.7, 0.2], [0.1, 0.8]])
        records = [json.loads(line) for line in record_lines(system, x0, solve_reference(system, x0), 2)]
        simulated = zero_control_cost(system, np.array([r["x0"] for r in records]))
        np.testing.assert_array_equal([r["J_zero"] for r in records], simulated)
        one_at_a_time = [zero_control_cost(system, np.array([r["x0"]]))[0] for r in records]
        np.testing.assert_allclose([r["J_zero"] for r in records], one_at_a_time, rtol=1e-12, atol=0)
        cols = {k: [r[k] for r in records] for k in ("system", "x0", "J_opt", "J_zero")}
        cols["J_floor"] = [0.01] * len(records)
        rewards.clear_batch_cache()
        given = rewards.score_batch([r["completion"] for r in records], **cols).metrics
        assert given.J_zero.tolist() == cols["J_zero"]
        fallback = rewards.score_batch(
            [r["completion"] for r in records], **(cols | {"J_zero": None})
        ).metrics
        np.testing.assert_allclose(fallback.J_zero, given.J_zero, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(fallback.score, given.score)


def test_an_empty_batch_gets_no_rewards():
    empty = {k: [] for k in ("system", "x0", "J_opt", "J_floor", "J_zero")}
    for name, function in REWARDS.items():
        assert function([], [], **empty) == [], name


def test_every_function_keeps_its_name():
    """TRL logs rewards/<__name__>/mean: the shared path must not rename or wrap them anonymously."""
    for name, function in REWARDS.items():
        assert function.__name__ == f"{name}_reward"
    every = [f"grpo.rewards.{name}=1" for name in REWARDS]
    functions, _ = reward_functions(resolve_config(None, every)["grpo"])
    assert [f.__name__ for f in functions] == [f"{name}_reward" for name in REWARDS]


def test_a_runaway_completion_is_a_failure_for_every_reward(instances):
    # the adversarial case (issue 21, row 10): 5,000,045 characters, mostly commas, inside valid tags; parse,
    # format checks and the optimality reward read it in full before (2.4 s, 6.9 s, 21.8 s for 8 of them)
    runaway = "<REASONING>r</REASONING><CONTROLS>" + "," * 5_000_000 + "</CONTROLS>"
    di = instances[0]
    assert call("format", [runaway], [di]) == [0.0]  # not even the 0.25 for tags in order
    for name in REWARDS:
        assert call(name, [runaway] * 8, [di] * 8) == [0.0] * 8, name
