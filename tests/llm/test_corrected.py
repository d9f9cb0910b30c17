"""Solver-corrected on-policy SFT (lib/llm/corrected.py): the rest it trains on is the optimum of the problem
with the model's own beginning fixed, the loss falls on that rest only, and the stage runs, records what
it built and resumes from the records it kept.

The rest is checked against an independent solve: the FULL horizon's box QP with the first k controls
pinned by equal bounds, not the shorter problem that optimal_rest solves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import call_script, make_dataset, one_thread, read_records, tiny_model_on  # noqa: F401

from lib.common.errors import EXIT_USAGE
from lib.control.answer import parse_controls
from lib.control.dataset_format import load_records
from lib.control.families import family_system, record_system
from lib.control.references import condensed_qp
from lib.control.systems import get_system, simulate, trajectory_cost
from lib.llm import corrected
from lib.llm.corrected import RECORDS_FILE, SUMMARY_FILE, optimal_rest, tokenized


def pinned_optimum(system, x0: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """u* [N] of the full-horizon box QP with u_0..u_{k-1} fixed to `prefix` (DAQP, equal bounds)."""
    import daqp

    qp, N, k = condensed_qp(system), system.steps, len(prefix)
    lower, upper = np.full(N, system.u_min), np.full(N, system.u_max)
    lower[:k] = upper[:k] = prefix
    model = daqp.Model()
    model.setup(qp.H, qp.linear_term(x0[None])[0], np.zeros((0, N)), upper, lower)
    u, _, exitflag, _ = model.solve()
    assert exitflag == 1
    return np.asarray(u)


def cost(system, x0: np.ndarray, u: np.ndarray) -> float:
    return float(trajectory_cost(system, simulate(system, x0[None], u[None]), u[None])[0])


@pytest.mark.parametrize("which", ["fixed", "family"])
def test_the_rest_is_the_optimum_with_the_own_beginning_fixed(which):
    """A beginning that is NOT optimal (the model's own): the rest label is, to the label grid, the optimum
    of the whole problem with those k controls pinned, and costs no more than rounding that optimum."""
    system = (
        get_system("double_integrator")
        if which == "fixed"
        else family_system(
            "double_integrator_family",
            {"dt": 0.4, "steps": 11, "u_max": 1.5, "q": 1.0, "r": 0.1, "qf": 10.0, "p_target": 0.3},
        )
    )
    rng = np.random.default_rng(0)
    for k in (1, 4, system.steps - 1):
        x0 = rng.uniform(-1, 1, size=(3, system.n))
        prefix = np.round(rng.uniform(system.u_min, system.u_max, size=(3, k)), 2)
        x_k, rest = optimal_rest(system, x0, prefix, decimals=2)
        np.testing.assert_allclose(x_k, simulate(system, x0, prefix)[:, -1])
        assert rest.shape == (3, system.steps - k)
        for i in range(3):
            best = pinned_optimum(system, x0[i], prefix[i])
            np.testing.assert_allclose(rest[i], best[k:], atol=0.015)  # the label grid is 0.01
            assert np.all(rest[i] == np.round(rest[i], 2))
            ours = cost(system, x0[i], np.concatenate([prefix[i], rest[i]]))
            rounded = cost(system, x0[i], np.concatenate([prefix[i], np.round(best[k:], 2)]))
            assert ours <= rounded * (1 + 1e-9) + 1e-12


def test_after_an_optimal_beginning_the_rest_is_the_label_of_a_nonlinear_problem():
    """Bellman's principle on the Van der Pol oscillator: from the state the optimum's own first k controls
    reach, the re-solved rest (multi-start NLP) is the optimum's rest."""
    from lib.control.references import solve_reference

    system = get_system("van_der_pol")
    x0 = np.array([[0.5, -0.3], [-1.0, 0.4]])
    optimum = solve_reference(system, x0).u
    k = system.steps // 3
    _, rest = optimal_rest(system, x0, optimum[:, :k], decimals=2)
    np.testing.assert_allclose(rest, optimum[:, k:], atol=0.015)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrected")
    data = make_dataset(root, "di", ["double_integrator_short"], 12, 2, "--prompt-style", "compact")
    tiny_model_on(root / "tiny", read_records(data, "train"))
    return root


def test_a_label_record_is_what_sft_trains_on_and_a_corrected_one_trains_the_rest_only(workspace):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace / "tiny")
    record = read_records(workspace / "datasets" / "di", "train")[0]
    label = record["completion"][-1]["content"]

    whole = tokenized(tokenizer, record["prompt"], label, 0)
    text = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)
    assert whole["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
    masked = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    assert whole["completion_mask"] == [0] * masked + [1] * (len(whole["input_ids"]) - masked)

    # an own answer with a wrong second control, cut after its third: the loss is on the 7 controls after it
    own = label.replace(label.split("<CONTROLS>")[1].split(",")[1], " 0.77", 1)
    cut = corrected._after_control(own, 3)
    content = own[:cut] + " 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17</CONTROLS>"
    row = tokenized(tokenizer, record["prompt"], content, cut)
    ids, mask = row["input_ids"], row["completion_mask"]
    first = mask.index(1)
    assert set(mask[first:]) == {1} and set(mask[:first]) == {0}
    trained = tokenizer.decode(ids[first:])
    assert trained.endswith("0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17</CONTROLS><|im_end|>\n")
    context = tokenizer.decode(ids[:first])
    assert context.startswith(head) and "0.77" in context and "0.11" not in context
    answer = (context + trained)[len(head) :].removesuffix("<|im_end|>\n")
    assert answer == content
    expected = [*parse_controls(own, 10).values[:3], 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17]
    np.testing.assert_array_equal(parse_controls(answer, 10).values, expected)


def test_records_from_own_answers_cut_and_completed_by_the_solver(workspace):
    """corrected_records: each parsed answer gives `cuts` rows at different k; the row's text is the answer's
    own beginning then the re-solved rest, and an answer that does not parse gives none."""
    records = read_records(workspace / "datasets" / "di", "train")[:3]
    answers = [r["completion"][-1]["content"] for r in records]
    answers[0] = answers[0].replace("<CONTROLS>", "<CONTROLS>1.50, ", 1)  # 11 numbers: does not parse
    answers[1] = "no answer"
    answers[2] = perturbed_labels(None, None, None, records[2:], None, 0)[0]
    rows, summary = corrected.corrected_records(records, answers, 2, np.random.default_rng(0))
    assert summary == {"prompts": 3, "parsed_answers": 1, "corrected_records": 2}
    system, x0 = record_system(records[2]), np.array(records[2]["x0"])
    own = parse_controls(answers[2], system.steps).values
    assert len({row["k"] for row in rows}) == 2  # two different cuts
    for row in rows:
        k = row["k"]
        values = parse_controls(row["content"], system.steps).values
        np.testing.assert_array_equal(values[:k], own[:k])
        np.testing.assert_allclose(values[k:], pinned_optimum(system, x0, own[:k])[k:], atol=0.015)
        assert row["content"][: row["cut"]] == answers[2][: row["cut"]]


def perturbed_labels(model, tokenizer, setup, records, settings, seed):
    """Stands in for a trained model's greedy answers (a tiny random model writes no parseable answer): each
    record's label with its first control moved by 0.3 towards the inside of the bounds (still feasible)."""
    answers = []
    for record in records:
        text = record["completion"][-1]["content"]
        first = text.split("<CONTROLS>")[1].split(",")[0]
        moved = float(first) + (0.3 if float(first) <= 0 else -0.3)
        answers.append(text.replace(f"<CONTROLS>{first}", f"<CONTROLS>{moved:.2f}", 1))
    return answers


def train(workspace: Path, *extra: str) -> int:
    return call_script(
        "main_trainer",
        [
            "--config", "configs/profiles/cpu.yaml",
            f"model.name={workspace / 'tiny'}", "model.max_seq_length=512", "model.lora.enabled=false",
            "data.dataset_name=di", f"data.datasets_dir={workspace / 'datasets'}",
            f"run.models_dir={workspace / 'models'}", "data.eval_max_samples=0",
            "sft.per_device_train_batch_size=2", "sft.max_steps=1",
            "corrected.per_device_train_batch_size=2", "corrected.max_steps=2", "corrected.prompts=5",
            "corrected.logging_steps=1", "corrected.max_new_tokens=32",
            *extra,
        ],
    )  # fmt: skip


def test_the_stage_trains_from_the_latest_sft_run_and_resumes_on_the_same_records(workspace, monkeypatch):
    assert train(workspace, "training_type=corrected", "run.run_id=c0") == EXIT_USAGE  # no SFT run yet
    assert train(workspace, "training_type=sft", "run.run_id=s1") == 0
    # the tiny random model writes nothing that parses: a clear refusal, not a run on zero records
    assert train(workspace, "training_type=corrected", "run.run_id=c_random") == EXIT_USAGE
    monkeypatch.setattr(corrected, "own_answers", perturbed_labels)
    assert train(workspace, "training_type=corrected", "run.run_id=c1") == 0

    run = workspace / "models/universal/corrected/c1"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed" and info["step"] == 2
    assert info["init_run"] == str(workspace / "models/universal/sft/s1")
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["prompts"] == 5 and summary["parsed_answers"] == 5 and summary["corrected_records"] == 10
    assert summary["label_records"] == 10 and summary["records"] == 20  # label_records -1: a 50/50 mix
    kept = [json.loads(line) for line in (run / RECORDS_FILE).read_text().splitlines()]
    assert sorted(r["k"] > 0 for r in kept) == [False] * 10 + [True] * 10

    # a resumed start reads the kept records and asks the model nothing
    def refuse(*args):
        raise AssertionError("a resumed run must not answer again")

    monkeypatch.setattr(corrected, "own_answers", refuse)
    again = corrected.training_records(
        json.loads((run / "config.json").read_text()), None, None, None, [], run, None
    )
    assert again == kept


def test_labels_only_trains_the_start_model_on_labels_and_asks_it_nothing(workspace, monkeypatch):
    """corrected.prompts=0: more SFT from a finished run (the control a second stage is judged against). The
    records are exactly the first label_records labels of the seeded shuffle as SFT tokenizes them (-1: all
    of them); with no labels to train on the config is refused before a model loads."""
    assert train(workspace, "training_type=sft", "run.run_id=s_labels") == 0

    def refuse(*args):
        raise AssertionError("labels only must not ask the start model")

    monkeypatch.setattr(corrected, "own_answers", refuse)
    labels_none = ("training_type=corrected", "corrected.prompts=0", "corrected.label_records=0")
    assert train(workspace, "run.run_id=l0", *labels_none) == EXIT_USAGE
    assert not (workspace / "models/universal/corrected/l0").exists()
    labels_only = ("training_type=corrected", "corrected.prompts=0", "corrected.label_records=6")
    assert train(workspace, "run.run_id=l1", *labels_only) == 0
    run = workspace / "models/universal/corrected/l1"
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "completed" and info["init_run"] == str(
        workspace / "models/universal/sft/s_labels"
    )
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert (summary["prompts"], summary["corrected_records"], summary["label_records"]) == (0, 0, 6)
    kept = [json.loads(line) for line in (run / RECORDS_FILE).read_text().splitlines()]
    assert len(kept) == 6 and all(r["k"] == 0 and all(r["completion_mask"][-1:]) for r in kept)
    train_records = load_records(workspace / "datasets" / "di", "train")[0]
    seed = json.loads((run / "config.json").read_text())["seed"]
    order = np.random.default_rng(seed).permutation(len(train_records))
    assert sorted(r["id"] for r in kept) == sorted(train_records[i]["id"] for i in order[:6])
    assert train(workspace, "run.run_id=l2", "training_type=corrected", "corrected.prompts=0") == 0
    summary = json.loads((workspace / "models/universal/corrected/l2" / SUMMARY_FILE).read_text())
    assert summary["label_records"] == len(train_records) and summary["corrected_records"] == 0


# ---------------------------------------------------------------- rejection-sampling fine-tuning (lib/llm/rft.py)


def test_rft_keeps_the_best_sample_only_where_it_beats_the_greedy_answer(workspace):
    from lib.llm.rft import better_samples

    records = load_records(workspace / "datasets" / "di", "train")[0][:3]  # with J_floor, as a stage has them
    labels = [r["completion"][-1]["content"] for r in records]
    worse = perturbed_labels(None, None, None, records, None, 0)
    greedy = [worse[0], labels[1], "no answer"]
    samples = [worse[0], labels[0], worse[1], worse[1], "nothing", worse[2]]  # 2 per record, record-major
    rows, summary = better_samples(records, greedy, samples, 2)
    # record 0: the label beats the perturbed greedy; record 1: greedy is the label, no sample beats it;
    # record 2: greedy does not parse, its one parsed sample is feasible
    assert [row["id"] for row in rows] == [records[0]["id"], records[2]["id"]]
    assert [row["content"] for row in rows] == [labels[0], worse[2]]
    assert rows[0]["gap"] < rows[0]["greedy_gap"] and rows[1]["greedy_gap"] is None
    assert summary["kept_samples"] == 2 and summary["greedy_feasible"] == 2 and summary["best_feasible"] == 3


def test_the_rft_stage_trains_on_the_samples_it_kept(workspace, monkeypatch):
    from lib.llm import rft

    if not (workspace / "models/universal/sft/latest").is_file():
        assert train(workspace, "training_type=sft", "run.run_id=s1") == 0

    def answers(model, tokenizer, setup, records, settings, seed, temperature=0.0, per_prompt=1):
        """Stands in for the start model: greedy answers are the perturbed labels, the samples the label
        then the perturbed label again (so each prompt's best sample is its label)."""
        worse = perturbed_labels(None, None, None, records, None, 0)
        if temperature == 0:
            return worse
        return [
            text for r, w in zip(records, worse, strict=True) for text in (r["completion"][-1]["content"], w)
        ]

    monkeypatch.setattr(rft, "own_answers", answers)
    assert train(workspace, "training_type=rft", "run.run_id=r1", "rft.samples=2", "rft.prompts=4",
                 "rft.per_device_train_batch_size=2", "rft.max_steps=1") == 0  # fmt: skip
    run = workspace / "models/universal/rft/r1"
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["kept_samples"] == 4 and summary["label_records"] == 4 and summary["records"] == 8
    kept = [json.loads(line) for line in (run / RECORDS_FILE).read_text().splitlines()]
    assert all(set(r["completion_mask"][r["completion_mask"].index(1) :]) == {1} for r in kept)
    assert json.loads((run / "run_info.json").read_text())["status"] == "completed"
