"""The evaluation harness: seeded tasks, the shared-prefill runner, reports, and bad arguments."""

import collections
import json
import re

import pytest

import pyuncomp
from pyuncomp.cli import main as cli_main
from pyuncomp.eval import TASKS, evaluate
from pyuncomp.eval.runner import Evaluator, settings_for
from pyuncomp.eval.tasks import make_samples


@pytest.fixture(scope="module")
def evaluator(smollm2_path):
    ev = Evaluator(smollm2_path, n_ctx=2560)
    yield ev
    ev.close()


@pytest.mark.parametrize("task", TASKS)
def test_tasks_are_seeded_sized_and_hold_their_answers(evaluator, task):
    count = evaluator.count_tokens
    a = make_samples(task, 1500, [0.3], 2, seed=1, count_tokens=count)
    assert [s.prompt for s in a] == [s.prompt for s in make_samples(task, 1500, [0.3], 2, seed=1, count_tokens=count)]
    assert a[0].prompt != a[1].prompt != make_samples(task, 1500, [0.3], 1, seed=2, count_tokens=count)[0].prompt
    # a depth given as an int is the same depth as the CLI's float
    assert make_samples(task, 1500, [1], 1, seed=1, count_tokens=count)[0].prompt == \
        make_samples(task, 1500, [1.0], 1, seed=1, count_tokens=count)[0].prompt
    for s in a:
        assert 0.9 * 1500 <= count(s.prompt) <= 1.05 * 1500, count(s.prompt)
        if task == "cwe":  # the answers are the most frequent words of the list
            words = collections.Counter(re.findall(r"\d+\. (\w+)", s.prompt))
            assert {w for w, _ in words.most_common(len(s.answers))} == set(s.answers)
        else:
            assert all(answer in s.prompt for answer in s.answers)


@pytest.mark.parametrize("length", [16384, 32768])
@pytest.mark.parametrize("task", TASKS)
def test_long_prompts_reach_their_length_without_passing_it(evaluator, task, length):
    # cwe's numbered list once outgrew its length (16k: 17.9k tokens, refused by the runner after every
    # shorter prompt had been answered) and qa ran out of distinct people at about 10k tokens
    s = make_samples(task, length, [0.5], 1, seed=0, count_tokens=evaluator.count_tokens)[0]
    assert 0.95 * length <= evaluator.count_tokens(s.prompt) <= length
    assert all(answer in s.prompt for answer in s.answers)


def test_a_prompt_too_long_for_the_context_is_refused_before_its_evaluation(evaluator):
    s = make_samples("passkey", 3000, [0.5], 1, seed=0, count_tokens=evaluator.count_tokens)[0]
    with pytest.raises(ValueError, match="more than the context"):
        evaluator.prompt_tokens(s)


def test_needles_sit_at_their_depth(evaluator):
    for depth in (0.0, 0.5, 1.0):
        s = make_samples("passkey", 1000, [depth], 1, seed=0, count_tokens=evaluator.count_tokens)[0]
        at = s.prompt.index(f"The pass key is {s.answers[0]}") / len(s.prompt)
        assert abs(at - depth) < 0.08, (depth, at)


def test_token_span_finds_the_tokens_of_a_needle(evaluator):
    s = make_samples("passkey", 600, [0.5], 1, seed=0, count_tokens=evaluator.count_tokens)[0]
    tokens = evaluator.llm.tokenize(s.prompt.encode())
    span = evaluator.token_span(tokens, s.answers[0])
    assert span == list(range(span[0], span[-1] + 1))
    assert s.answers[0] in evaluator.llm.detokenize([tokens[i] for i in span]).decode()
    assert s.answers[0] not in evaluator.llm.detokenize([tokens[i] for i in span[1:]]).decode()
    assert s.answers[0] not in evaluator.llm.detokenize([tokens[i] for i in span[:-1]]).decode()
    assert evaluator.token_span(tokens, "no such text anywhere") == []


def test_an_answer_under_a_setting_is_the_answer_of_normal_use(smollm2_path, evaluator):
    # the runner evaluates the prompt once and compresses a saved copy per setting; a user's Llama
    # with the same setting evaluates and compresses the prompt itself: the same greedy answer
    # (a pruned setting: the runner evaluates the prompt pruned once and compresses copies of it)
    sample = make_samples("niah_multikey", 2000, [0.5], 1, seed=3, count_tokens=evaluator.count_tokens)[0]
    settings = settings_for(["full", "uncomp", "snapkv"], [0.05], prefill_keeps=[0.5])
    assert [s.name for s in settings] == ["full", "uncomp 0.05", "uncomp 0.05 prune0.5", "snapkv 0.05",
                                          "snapkv 0.05 prune0.5"]
    records = evaluator.run(sample, settings)
    assert [r["setting"] for r in records] == ["full", "uncomp 0.05", "snapkv 0.05", "uncomp 0.05 prune0.5",
                                               "snapkv 0.05 prune0.5"]
    for record in records:
        setting = next(s for s in settings if s.name == record["setting"])
        llm = pyuncomp.Llama(smollm2_path, n_ctx=2560, **setting.config(), verbose=False)
        out = llm(sample.prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]
        llm.close()
        assert record["output"] == out, setting
        assert abs(record["kv_fraction"] - (1.0 if setting.method == "full" else 0.05)) < 0.01


def test_settings_do_not_leak_into_each_other(evaluator):
    # a chat's second turn observes new queries; the next setting must still compress the first turn
    # with the first turn's own (restored with the saved state)
    sample = make_samples("chat", 1200, [0.5], 1, seed=5, count_tokens=evaluator.count_tokens)[0]
    together = evaluator.run(sample, settings_for(["full", "snapkv", "uncomp"], [0.05]))
    for setting, record in zip(settings_for(["snapkv", "uncomp"], [0.05]), together[1:]):
        alone = evaluator.run(sample, [setting])[0]
        assert alone["output"] == record["output"], setting


@pytest.mark.fidelity
def test_fast_fidelity_subset_at_2k(smollm2_path, tmp_path):
    """CI's subset of the report (docs/fidelity.md): SmolLM2 at 2k tokens, full vs snapkv vs uncomp at
    ratio 0.05 on passkeys at three depths and the two-turn chat."""
    result = evaluate(smollm2_path, ["passkey", "chat"], ["full", "snapkv", "uncomp"], [0.05], [2048],
                      depths=[0.2, 0.5, 0.8], samples=1, out_dir=tmp_path)
    summary = {(r["task"], r["setting"]): r["score"] for r in result["summary"]}
    assert summary["passkey", "full"] >= 2 / 3
    assert summary["passkey", "uncomp 0.05"] >= summary["passkey", "full"]
    # (uncomp vs snapkv on the average is a target not met yet: docs/fidelity.md reports by how much)
    assert len(result["records"]) == 2 * 3 * 3
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == result["summary"] and len(saved["records"]) == 18
    for png in ("summary.png", "passkey_heatmap.png", "chat_heatmap.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| uncomp 0.05 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("kwargs, field", [
    ({"tasks": ["nope"]}, "task"), ({"methods": ["h2o"]}, "method"), ({"ratios": [0.0]}, "ratio"),
    ({"ratios": [1.5]}, "ratio"), ({"lengths": [9000]}, "longer than the model's context"),
    ({"lengths": [10]}, "length"), ({"depths": [1.5]}, "depth"), ({"samples": 0}, "samples"),
    ({"new_turns": "recompute"}, "new_turns"), ({"prefill_keeps": [0.0]}, "prefill_keep"),
    ({"prefill_keeps": [0.5], "prefill_min_tokens": -1}, "prefill_min_tokens"), ({"lookahead": 100}, "lookahead"),
])
def test_evaluate_refuses_bad_arguments(smollm2_path, kwargs, field):
    args = {"tasks": ["passkey"], "methods": ["full", "uncomp"], "ratios": [0.05], "lengths": [512], **kwargs}
    with pytest.raises(ValueError, match=field):
        evaluate(smollm2_path, **args)


def test_chat_needs_a_chat_template(gemma3_path):
    # the Gemma 3 GGUF carries no chat template: refused up front, not after the other tasks ran
    with pytest.raises(ValueError, match="no chat template"):
        evaluate(gemma3_path, ["passkey", "chat"], ["full"], [0.05], [256], depths=[0.5])


@pytest.mark.parametrize("argv, message", [
    (["eval", "nope"], "task"), (["eval", "passkey", "--methods", "full,h2o"], "method"),
    (["eval", "passkey", "--ratios", "2"], "ratio"), (["eval", "passkey", "--lengths", "100000"], "longer than"),
])
def test_eval_cli_refuses_bad_arguments(argv, message, capsys):
    assert cli_main(argv + ["--quiet"]) == 2
    assert message in capsys.readouterr().err
