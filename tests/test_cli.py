"""The pyuncomp command, run as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECORD = json.loads((Path(__file__).parent / "data" / "stock_smollm2.json").read_text())


def pyuncomp(*args, stdin=None):
    # run outside the checkout: its pyuncomp/ source folder would shadow the installed package
    return subprocess.run([sys.executable, "-m", "pyuncomp", *args], input=stdin, cwd=Path(__file__).parent.parent.parent,
                          capture_output=True, text=True, timeout=300)


def test_generate_on_the_default_model_matches_stock():
    case = RECORD["completions"][0]
    r = pyuncomp("generate", case["prompt"], "--max-tokens", "32")
    assert r.returncode == 0, r.stderr
    assert r.stdout == case["text"] + "\n"


def test_chat_streams_a_reply_per_turn(smollm2_path):
    case = RECORD["chats"][0]
    r = pyuncomp("chat", "--model", smollm2_path, "--max-tokens", "32",
                 stdin=case["messages"][0]["content"] + "\n\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "> " + case["content"] + "\n> "


def test_chat_keeps_the_conversation(smollm2_path):
    # the second turn sees the first: the prompt grows, so the reply differs from a fresh one
    r = pyuncomp("chat", "--model", smollm2_path, "--max-tokens", "16",
                 stdin="My name is Ada.\nWhat is my name?\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split("> ")[1:-1]
    assert len(replies) == 2 and all(reply.strip() for reply in replies)


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model.gguf"], "neither a file nor a built-in model"),
    (["--ratio", "0"], "ratio: must be in (0, 1]"),
    (["--ratio", "1.5"], "ratio: must be in (0, 1]"),
    (["--method", "nope"], "method: must be one of"),
])
def test_generate_bad_input_gives_a_clear_message(args, message):
    r = pyuncomp("generate", "hi", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_generate_rejects_a_non_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("not a model")
    r = pyuncomp("generate", "hi", "--model", str(bad))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr


def test_ratio_that_is_not_a_number_is_an_argparse_error():
    r = pyuncomp("generate", "hi", "--ratio", "x")
    assert r.returncode == 2 and "invalid float value: 'x'" in r.stderr
