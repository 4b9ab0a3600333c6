"""`pyuncomp serve`, driven with the openai client as a user drives it."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

MODEL = "smollm2-135m"
COLORS = ["red", "green", "blue", "yellow", "black", "white", "purple"]
ANIMALS = ["cat", "dog", "horse", "goat", "owl"]
# ~700 tokens: long enough that ratio 0.05 keeps a small part of it
DOCUMENT = " ".join(f"Item {i} is a {COLORS[i % 7]} {ANIMALS[i % 5]}." for i in range(90))
MESSAGES = [{"role": "user", "content": DOCUMENT + "\nWhat animal is item 12?"}]


def pyuncomp(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    # run outside the checkout: its pyuncomp/ source folder would shadow the installed package
    return subprocess.Popen([sys.executable, "-m", "pyuncomp", *args], cwd=Path(__file__).parent.parent.parent,
                            stdout=stdout, stderr=stderr, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(log: Path, *args):
    """The URL of a `pyuncomp serve` of SmolLM2 at ratio 0.05 with further args, until the block ends."""
    port = free_port()
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        server = pyuncomp("serve", "--model", MODEL, "--ratio", "0.05", "--n-ctx", "2048", "--port", str(port), *args,
                          stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with served(tmp_path_factory.mktemp("serve") / "log.txt") as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="x")


def chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, **kwargs)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion_reports_the_compressed_cache(client):
    response = chat(client)
    assert response.choices[0].message.content.strip()
    stats = response.usage.compression
    assert stats["method"] == "uncomp" and stats["ratio"] == 0.05
    assert stats["n_tokens"] >= response.usage.prompt_tokens > 600
    assert 0 < stats["kv_bytes"] < stats["kv_bytes_full"] / 5


def test_completion_reports_the_compressed_cache(client):
    response = client.completions.create(model=MODEL, prompt=DOCUMENT + "\nItem 12 is a", max_tokens=4,
                                         temperature=0)
    assert response.choices[0].text.strip()
    stats = response.usage.compression
    assert 0 < stats["kv_bytes"] < stats["kv_bytes_full"] / 5


def test_streamed_chat_matches_the_non_streamed_answer(client):
    # the same request again, streamed: answered afresh, not from the cache the first one compressed
    answer = chat(client).choices[0].message.content
    chunks = [c.choices[0].delta.content or "" for c in chat(client, stream=True) if c.choices]
    assert len(chunks) > 2
    assert "".join(chunks) == answer


def test_a_request_changes_the_compression_for_itself_only(client):
    default = chat(client).usage.compression
    larger = chat(client, extra_body={"compression": {"ratio": 0.2}}).usage.compression
    assert larger["ratio"] == 0.2 and larger["method"] == "uncomp"
    assert default["kv_bytes"] < larger["kv_bytes"] < larger["kv_bytes_full"]
    snapkv = chat(client, extra_body={"compression": {"method": "snapkv"}}).usage.compression
    assert snapkv["method"] == "snapkv" and snapkv["ratio"] == 0.05
    # the next request without changes is compressed with the server's settings again
    assert chat(client).usage.compression == default


def test_a_streamed_request_changes_the_compression(client):
    # keeping the whole prompt changes this answer, so the stream shows which settings it ran with
    full = chat(client, extra_body={"compression": {"method": "full"}}).choices[0].message.content
    assert full != chat(client).choices[0].message.content
    streamed = chat(client, stream=True, extra_body={"compression": {"method": "full"}})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full


@pytest.mark.parametrize("changes, status, message", [
    ({"ratio": 5}, 400, "compression.ratio: must be in (0, 1]"),
    ({"method": "nope"}, 400, "compression.method: must be one of"),
    ({"window": 0}, 400, "compression.window"),
    ({"ratioo": 0.1}, 400, "compression.ratioo: not a compression setting"),
    ({"ratio": "0.1"}, 400, "compression.ratio: must be a number"),
    (5, 400, "compression: must be an object of settings"),
])
def test_bad_compression_changes_are_client_errors(client, changes, status, message):
    with pytest.raises(openai.APIStatusError) as error:
        chat(client, extra_body={"compression": changes})
    assert error.value.status_code == status
    assert message in str(error.value.body)


def test_a_recall_server_answers_the_next_turn_evaluating_only_what_it_adds(client, tmp_path):
    # the same chat's second request: the recall server restores the history's whole cache copied at the
    # first request's compression, evaluates the new tokens and compresses scored by the new question,
    # which answers as the default server's fresh evaluation of the whole chat does
    first = chat(client)
    assert first.usage.compression["evaluated_tokens"] >= first.usage.prompt_tokens  # evaluated afresh
    turn2 = MESSAGES + [{"role": "assistant", "content": first.choices[0].message.content},
                        {"role": "user", "content": "What colour is item 30?"}]
    fresh = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=12, temperature=0)
    with served(tmp_path / "log.txt", "--new-turns", "recall") as url:
        recall = openai.OpenAI(base_url=url + "/v1", api_key="x")
        assert chat(recall).choices[0].message.content == first.choices[0].message.content
        again = recall.chat.completions.create(model=MODEL, messages=turn2, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == fresh.choices[0].message.content
    assert again.usage.compression["evaluated_tokens"] < again.usage.prompt_tokens / 4
    assert fresh.usage.compression["evaluated_tokens"] >= fresh.usage.prompt_tokens
    assert again.usage.compression["kv_bytes"] < again.usage.compression["kv_bytes_full"] / 5  # compressed again


def test_create_app_refuses_a_new_turns_mode_a_server_cannot_keep():
    from pyuncomp.server import create_app  # first: pyuncomp loads its libllama before llama_cpp would
    from llama_cpp.server.settings import ModelSettings

    # append would answer a request from the cache an earlier one compressed: answers would depend on it
    with pytest.raises(ValueError, match="new_turns: must be 'reevaluate' or 'recall' for a server, got 'append'"):
        create_app(ModelSettings(model="unused.gguf"), new_turns="append", ratio=0.05)


def test_serve_help():
    out, err = pyuncomp("serve", "--help").communicate(timeout=60)
    assert "--port" in out and "compression" in out


@pytest.mark.parametrize("args, message", [
    (["--ratio", "5"], "ratio: must be in (0, 1]"),
    (["--method", "nope"], "method: must be one of"),
    (["--port", "70000"], "port: must be in [0, 65535]"),
    (["--new-turns", "append"], "--new-turns: invalid choice: 'append'"),
])
def test_serve_bad_input_gives_a_clear_message(args, message):
    server = pyuncomp("serve", *args)
    _, err = server.communicate(timeout=120)
    assert server.returncode == 2
    assert message in err and "Traceback" not in err
