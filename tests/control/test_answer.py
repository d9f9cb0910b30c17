"""Prompt and answer format (lib/control/answer.py): a strict, total parser and labels whose reasoning is true."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.control.answer import (
    PROMPT_STYLES,
    TAGS,
    build_prompt,
    format_answer,
    format_answers,
    format_controls,
    parse_controls,
    stated_bounds,
)
from lib.control.dataset import sample_initial_states
from lib.control.families import FAMILIES, draw_parameters, family_system
from lib.control.references import solve_reference
from lib.control.systems import SYSTEMS, get_system, simulate, trajectory_cost


def answer(body: str, reasoning: str = "r") -> str:
    return f"<REASONING>{reasoning}</REASONING><CONTROLS>{body}</CONTROLS>"


# text made of the pieces answers are made of, so the fuzzer reaches deep into the parser
_piece = st.sampled_from(
    [
        *TAGS,
        ",",
        ", ",
        " ",
        "\n",
        "-",
        "+",
        ".",
        "e",
        "E",
        "1",
        "0.5",
        "-3.00",
        "inf",
        "nan",
        "1e999",
        "x",
        "٣",
    ]
)
_near_answers = st.lists(_piece, max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(), _near_answers), count=st.integers(min_value=0, max_value=5))
def test_parser_never_raises_and_only_accepts_exact_counts_of_finite_numbers(text, count):
    result = parse_controls(text, count)
    assert isinstance(result.ok, bool) and isinstance(result.reason, str)
    if result.ok:
        assert result.reason == "" and len(result.values) == count and np.all(np.isfinite(result.values))
    else:
        assert result.values is None and result.reason


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
    decimals=st.integers(min_value=0, max_value=6),
)
def test_formatted_controls_round_trip_to_the_printed_values(values, decimals):
    text = format_controls(np.array(values), decimals)
    result = parse_controls(answer(text), len(values))
    assert result.ok, result.reason
    printed = [float(token) for token in text.split(", ")]
    np.testing.assert_array_equal(result.values, printed)
    assert not any(t.startswith("-") and float(t) == 0 for t in text.split(", "))  # no negative zero


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1, 2", "missing tag <REASONING>"),
        ("<REASONING>a</REASONING>", "missing tag <CONTROLS>"),
        ("<REASONING>a</REASONING><CONTROLS>1, 2", "missing tag </CONTROLS>"),
        ("<CONTROLS>1, 2</CONTROLS><REASONING>a</REASONING>", "tags out of order"),
        (answer("1, 2") + answer("1, 2"), "appears 2 times"),
        ("Sure! " + answer("1, 2"), "text outside"),
        (answer("1, 2") + " done", "text outside"),
        (answer(" "), "empty <CONTROLS> block"),
        (answer("1, 2, 3"), "wrong count: got 3 comma-separated entries, expected 2"),
        (answer("1"), "wrong count: got 1 comma-separated entries, expected 2"),
        (answer("1, 2,"), "wrong count: got 3"),
        (answer("1, abc"), "not a number at u_1: 'abc'"),
        (answer("1,"), "not a number at u_1: ''"),
        (answer("1, 1_000"), "not a number at u_1"),
        (answer("1, ٣"), "not a number at u_1"),
        (answer("nan, 1"), "non-finite value at u_0: 'nan'"),
        (answer("1, -inf"), "non-finite value at u_1"),
        (answer("1e999, 1"), "non-finite value at u_0"),
    ],
)
def test_parser_names_what_is_wrong(text, reason):
    result = parse_controls(text, 2)
    assert not result.ok
    assert reason in result.reason


def test_parser_accepts_whitespace_and_signs():
    result = parse_controls("\n <REASONING>x</REASONING>\n<CONTROLS> +1.50 ,-2,\n.5 </CONTROLS>\n", 3)
    assert result.ok
    np.testing.assert_array_equal(result.values, [1.5, -2.0, 0.5])


def test_parser_is_total_on_non_strings():
    assert not parse_controls(None, 3).ok  # type: ignore[arg-type]
    assert "not a string" in parse_controls(b"<REASONING>", 3).reason  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=list(SYSTEMS))
def labelled(request):
    system = get_system(request.param)
    x0 = sample_initial_states(system, 40 if system.is_linear else 2, seed=11, wide=True)
    ref = solve_reference(system, x0)
    return system, x0, ref, format_answers(system, x0, ref.u_label, ref.J)


def test_every_label_round_trips_through_the_parser(labelled):
    system, _, ref, answers = labelled
    for text, u in zip(answers, ref.u_label, strict=True):
        result = parse_controls(text, system.steps)
        assert result.ok, result.reason
        np.testing.assert_array_equal(result.values, u)


def test_label_reasoning_states_true_instance_facts(labelled):
    system, x0, ref, answers = labelled
    N = system.steps
    for i, text in enumerate(answers):
        reasoning = text[len("<REASONING>") : text.index("</REASONING>")]
        final = simulate(system, x0[i : i + 1], ref.u_label[i : i + 1])[0, -1]
        assert f"x_{N} = ({', '.join(f'{v:.3f}' for v in final)})".replace("-0.000", "0.000") in reasoning
        assert f"J* = {ref.J[i]:.4g}" in reasoning
        assert f"J = {ref.J_label[i]:.4g}" in reasoning
        zero = np.zeros((1, N))
        assert (
            f"J0 = {trajectory_cost(system, simulate(system, x0[i : i + 1], zero), zero)[0]:.4g}" in reasoning
        )
        upper = np.flatnonzero(ref.u_label[i] == system.u_max)
        if upper.size:
            assert f"upper bound {system.u_max:.2f} at step" in reasoning
            first = re.search(r"upper bound [-\d.]+ at steps? (\d+)", reasoning).group(1)
            assert int(first) == upper[0]
        if not ((ref.u_label[i] == system.u_max) | (ref.u_label[i] == system.u_min)).any():
            assert "No control reaches a bound." in reasoning
    assert len(set(a[: a.index("<CONTROLS>")] for a in answers)) == len(answers)  # no two alike


def test_prompt_shows_the_rounded_state_the_horizon_and_the_format():
    system = get_system("double_integrator")
    messages = build_prompt(system, np.array([0.123456, -0.5]), decimals=2)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "x_0 = (0.12, -0.50)" in user
    assert "-3 <= u_k <= 3" in user and "dt = 0.1 s" in user and "N = 50 steps" in user
    assert "exactly 50 comma-separated numbers with 2 decimals" in user
    assert "Q = diag(1, 1), R = 0.1, Qf = diag(10, 10)" in user
    three = build_prompt(system, np.array([0.123456, -0.5]), decimals=3)[1]["content"]
    assert "x_0 = (0.123, -0.500)" in three and "with 3 decimals" in three


def test_format_answer_matches_the_batch_version(labelled):
    system, x0, ref, answers = labelled
    assert format_answer(system, x0[0], ref.u_label[0], ref.J[0]) == answers[0]


# ---------------------------------------------------------------- prompt and reasoning styles


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in re.split(r"[,;]\s*", text)])


def _matrix_of(text: str, n: int) -> np.ndarray:
    """'diag(a, b)' or '[a, b; c, d]' as an array (the compact statement's two matrix forms)."""
    if text.startswith("diag("):
        return np.diag(_numbers(text[5:-1]))
    return _numbers(text[1:-1]).reshape(n, -1)


def rebuild_problem(messages: list[dict]) -> dict:
    """Everything a solver needs, read back from the compact text alone (no lookup by system name)."""
    system_text, user_text = messages[0]["content"], messages[1]["content"]
    state = re.search(r"x = \(([^)]*)\)", system_text).group(1).split(", ")
    n = len(state)
    matrix = r"(diag\([^)]*\)|\[[^\]]*\])"
    problem = {
        "state_names": tuple(state),
        "steps": int(re.search(r"N = (\d+);", system_text).group(1)),
        "bounds": tuple(float(v) for v in re.search(r"(\S+) <= u <= ([^;]+);", system_text).groups()),
        "Q": _matrix_of(re.search(rf"Q = {matrix}", system_text).group(1), n),
        "R": float(re.search(r"R = ([^,]+),", system_text).group(1)),
        "Qf": _matrix_of(re.search(rf"Qf = {matrix}", system_text).group(1), n),
        "x_target": _numbers(re.search(r"x\* = \(([^)]*)\)", system_text).group(1)),
        "x0": _numbers(re.fullmatch(r"x_0 = \(([^)]*)\)", user_text).group(1)),
    }
    linear = re.search(rf"A = {matrix}, B = {matrix}", system_text)
    if linear:
        problem["A"] = _matrix_of(linear.group(1), n)
        problem["B"] = _matrix_of(linear.group(2), n)
    else:  # "name' = expression, ..., RK4 step dt = D"
        ode = re.search(r"\), (.*), RK4 step dt = ([\d.]+);", system_text)
        problem["dt"] = float(ode.group(2))
        problem["rhs"] = dict(re.findall(r"(\w+)' = ([^,]+)", ode.group(1)))
    return problem


def _evaluate_rhs(expressions: dict, names: tuple, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    scope = {"sin": np.sin, "cos": np.cos, "u": u, **{name: x[:, i] for i, name in enumerate(names)}}
    return np.stack([eval(expressions[name].replace("^", "**"), scope) for name in names], axis=1)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_the_compact_prompt_states_the_whole_problem(name):
    """Rebuilt from the compact text only, the problem is the record's: dynamics (the exact matrices, or a
    right-hand side that evaluates like the simulator's), horizon, bounds, cost, target and x_0."""
    system = get_system(name)
    x0 = sample_initial_states(system, 3, seed=1)[2]
    problem = rebuild_problem(build_prompt(system, x0, decimals=2, style="compact"))
    assert problem["state_names"] == system.state_names and problem["steps"] == system.steps
    assert problem["bounds"] == (system.u_min, system.u_max)
    close = {"rtol": 1e-5, "atol": 1e-6}  # printed with 6 significant digits
    np.testing.assert_allclose(problem["Q"], system.Q, **close)
    np.testing.assert_allclose(problem["Qf"], system.Qf, **close)
    np.testing.assert_allclose(problem["x_target"], system.x_target, **close)
    np.testing.assert_allclose(problem["x0"], np.round(x0, 2))
    assert problem["R"] == system.R
    if system.is_linear:
        np.testing.assert_allclose(problem["A"], system.A, **close)
        np.testing.assert_allclose(problem["B"], system.B, **close)
    else:
        assert problem["dt"] == system.dt
        rng = np.random.default_rng(0)
        x, u = rng.uniform(-2, 2, (64, system.n)), rng.uniform(system.u_min, system.u_max, 64)
        expected = np.stack(system.rhs([x[:, i] for i in range(system.n)], u, np), axis=1)
        np.testing.assert_allclose(_evaluate_rhs(problem["rhs"], system.state_names, x, u), expected, **close)


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_the_bounds_a_prompt_states_read_back_exactly(style):
    """What expected-value decoding clips to: every system's bounds and a family's drawn ones, in both
    styles, read back from the prompt alone; a prompt that is not ours states none."""
    rng = np.random.default_rng(0)
    systems = [get_system(name) for name in SYSTEMS]
    systems += [family_system(name, p) for name in FAMILIES for p in draw_parameters(FAMILIES[name], 3, rng)]
    for system in systems:
        x0 = sample_initial_states(system, 1, seed=2)[0]
        assert stated_bounds(build_prompt(system, x0, 2, style)) == (system.u_min, system.u_max), system.name
    assert stated_bounds([{"role": "user", "content": "x_0 = (0.5, 0.1)"}]) is None


def test_compact_is_a_fraction_of_the_full_statement():
    system = get_system("double_integrator_short")
    full = build_prompt(system, np.array([0.1, -0.2]))
    compact = build_prompt(system, np.array([0.1, -0.2]), style="compact")
    assert len("".join(m["content"] for m in compact)) < 0.4 * len("".join(m["content"] for m in full))
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt(system, np.array([0.1, -0.2]), style="short")


def test_every_reasoning_style_carries_the_same_controls(labelled):
    system, x0, ref, full = labelled
    brief = format_answers(system, x0, ref.u_label, ref.J, reasoning="brief")
    none = format_answers(system, x0, ref.u_label, ref.J, reasoning="none")
    for answers in (full, brief, none):
        parsed = [parse_controls(a, system.steps) for a in answers]
        assert all(p.ok for p in parsed)
        np.testing.assert_array_equal([p.values for p in parsed], ref.u_label)
    assert all(a.startswith("<REASONING></REASONING><CONTROLS>") for a in none)
    assert all(len(b) < len(f) for b, f in zip(brief, full, strict=True))
    assert all(("bound" in b) and ("They start at u_0" in b) for b in brief)


def test_answers_longer_than_any_label_fail_at_once_naming_the_length():
    from lib.control.answer import MAX_ANSWER_CHARS, format_checks

    system = get_system("double_integrator")
    zeros = format_controls(np.zeros(system.steps))
    padded = f"<REASONING>{' ' * MAX_ANSWER_CHARS}</REASONING><CONTROLS>{zeros}</CONTROLS>"
    parsed = parse_controls(padded, system.steps)
    assert not parsed.ok and parsed.reason.startswith("too long") and str(MAX_ANSWER_CHARS) in parsed.reason
    assert not any(format_checks(padded, system).values())
    # the same answer with a reasoning a label could have is fine
    assert parse_controls(padded.replace(" " * MAX_ANSWER_CHARS, "short"), system.steps).ok


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_the_longest_labels_are_far_below_the_length_bound(name):
    from lib.control.answer import MAX_ANSWER_CHARS

    system = get_system(name)
    x0 = sample_initial_states(system, 2, seed=3, wide=True)
    u = np.full((2, system.steps), system.u_min + 0.123456)  # 6 decimals, the most the schema allows
    answers = format_answers(system, x0, np.round(u, 6), np.ones(2), decimals=6)
    assert max(map(len, answers)) * 10 < MAX_ANSWER_CHARS
