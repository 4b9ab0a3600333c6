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


@pytest.mark.parametrize("new_turns", ["append", "reevaluate", "recall"])
def test_chat_keeps_the_conversation(smollm2_path, new_turns):
    # the second turn sees the first: the prompt grows, so the reply differs from a fresh one
    r = pyuncomp("chat", "--model", smollm2_path, "--max-tokens", "16", "--new-turns", new_turns,
                 stdin="My name is Ada.\nWhat is my name?\n")
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split("> ")[1:-1]
    assert len(replies) == 2 and all(reply.strip() for reply in replies)


def test_chat_commands_change_and_report_compression(smollm2_path, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Item {i} is a red car." for i in range(150)) + " The pass key is 71942.")
    script = [f"/file {doc}", "/ratio 0.1", "/method snapkv", "/ratio 5", f"/file {tmp_path / 'missing.txt'}",
              "What is the pass key?", "/stats", ""]
    r = pyuncomp("chat", "--model", smollm2_path, "--ratio", "0.05", "--max-tokens", "8", stdin="\n".join(script) + "\n")
    assert r.returncode == 0, r.stderr
    assert f"attached {doc}" in r.stderr
    assert "later prompts: snapkv, ratio 0.1" in r.stderr
    assert "/ratio: ratio: must be in (0, 1]" in r.stderr and "/file: [Errno 2]" in r.stderr
    assert "prompt" in r.stderr  # the progress bar of the ~1.5k-token prompt
    stats = [line for line in r.stderr.splitlines() if line.startswith("snapkv ratio 0.1:")]
    assert len(stats) == 1
    held = float(stats[0].split("(")[1].split("%")[0])
    assert "host copy for the next turn" in stats[0]  # the chat's default new_turns="recall" keeps one
    assert held < 20  # snapkv 0.1 held about a tenth of the full cache for the document's prompt
    assert r.stdout.replace("> ", "").strip()  # the reply to the question (commands print nothing on stdout)


def test_ctrl_c_stops_a_reply_then_quits(smollm2_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "pyuncomp", "chat", "--model", smollm2_path, "--max-tokens", "2000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent.parent)
    proc.stdin.write("Write a long essay about the history of Rome, with many details.\n")  # ~9 kB of reply
    proc.stdin.flush()
    seen = ""
    while seen.count("> ") < 1 or len(seen.split("> ", 1)[1]) < 1:  # the reply has begun
        c = proc.stdout.read(1)
        assert c, proc.stderr.read()
        seen += c
    proc.send_signal(signal.SIGINT)
    while not seen.endswith("\n> "):
        c = proc.stdout.read(1)
        assert c, proc.stderr.read()
        seen += c
    # the reply stopped early (uninterrupted it runs to ~9 kB), marked as stopped
    assert len(seen) < 4000 and seen.endswith(" [stopped]\n> "), seen[-500:]
    proc.send_signal(signal.SIGINT)  # at the prompt: quits
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, (proc.returncode, err[-3000:])


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


@pytest.mark.parametrize("command", ["profile", "bench"])
def test_help_loads_neither_the_command_nor_matplotlib(command):
    # (importing the pyuncomp package loads the native library already; help stops before anything else)
    code = ("import sys; from pyuncomp.cli import main\n"
            "try:\n    main([%r, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert not {'pyuncomp.bench', 'pyuncomp.profile', 'matplotlib'} & set(sys.modules)\n" % command)
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent.parent, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"usage: pyuncomp {command}" in r.stdout and "--ratio" in r.stdout


def test_profile_bad_input_gives_a_clear_message(smollm2_path, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    long = tmp_path / "long.txt"
    long.write_text("The grass is green. " * 100)  # about 500 tokens
    cases = [(["--prompt-file", str(tmp_path / "none.txt")], "prompt file: no such file"),
             (["--prompt-file", str(empty)], "is empty"),
             (["--prompt-file", str(long), "--n-ctx", "256"], "tokens do not fit the context of 256"),
             (["--prompt-file", str(long), "--ratio", "2"], "ratio: must be in (0, 1]")]
    for args, message in cases:
        r = pyuncomp("profile", "--model", smollm2_path, "--out", str(tmp_path / "out"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--depths", "256", "32"], "depth: must be an integer number of tokens >= 64, got 32"),
    (["--ratio", "0"], "ratio: must be in (0, 1]"),
    (["--ratio", "1.5"], "ratio: must be in (0, 1]"),
    (["--ratio", "1"], "keeps the whole cache"),
    (["--method", "nope"], "method: must be one of"),
    (["--method", "full"], "keeps the whole cache"),
    (["--rounds", "0"], "rounds: must be an integer >= 1"),
])
def test_bench_bad_input_gives_a_clear_message(smollm2_path, args, message):
    r = pyuncomp("bench", "--model", smollm2_path, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bench_prints_full_and_method_rows(smollm2_path):
    r = pyuncomp("bench", "--model", smollm2_path, "--depths", "256", "--n-gen", "4", "--rounds", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| method | ratio | depth |") and lines[1].startswith("|---")
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == ["full", "uncomp"]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    held = header.index("KV held of full")
    assert float(rows["full"][held]) == 1.0
    assert float(rows["uncomp"][held]) <= 0.05 + 0.01
    assert rows["uncomp"][1] == "0.05" and rows["uncomp"][2] == "256"
    assert float(rows["uncomp"][header.index("decode tok/s (median of 1)")]) > 0
