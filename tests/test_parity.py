"""pyuncomp.Llama at ratio 1.0 gives stock llama-cpp-python 0.3.36's greedy outputs, token for token.

tests/data/stock_smollm2.json was recorded by tools/record_stock_outputs.py with the stock package.
"""

import json
from pathlib import Path

import pytest

from parity_cases import CHATS, MAX_TOKENS, PROMPTS

RECORD = json.loads((Path(__file__).parent / "data" / "stock_smollm2.json").read_text())


def test_record_covers_the_cases():
    assert [c["prompt"] for c in RECORD["completions"]] == PROMPTS
    assert [c["messages"] for c in RECORD["chats"]] == CHATS


@pytest.mark.parametrize("case", RECORD["completions"], ids=lambda c: c["prompt"][:20])
def test_completion_matches_stock(smollm2, case):
    out = smollm2.create_completion(case["prompt"], max_tokens=MAX_TOKENS, temperature=0.0)
    assert out["choices"][0]["text"] == case["text"]


@pytest.mark.parametrize("case", RECORD["completions"], ids=lambda c: c["prompt"][:20])
def test_greedy_tokens_match_stock(smollm2, case):
    tokens = []
    for tok in smollm2.generate(smollm2.tokenize(case["prompt"].encode()), temp=0.0, top_k=1):
        if tok == smollm2.token_eos() or len(tokens) == MAX_TOKENS:
            break
        tokens.append(tok)
    assert tokens == case["tokens"]


@pytest.mark.parametrize("case", RECORD["chats"], ids=lambda c: c["messages"][-1]["content"][:20])
def test_chat_matches_stock(smollm2, case):
    out = smollm2.create_chat_completion(case["messages"], max_tokens=MAX_TOKENS, temperature=0.0)
    assert out["choices"][0]["message"]["content"] == case["content"]


def test_streaming_concatenates_to_the_same_text(smollm2):
    case = RECORD["completions"][0]
    chunks = smollm2.create_completion(case["prompt"], max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
    assert "".join(c["choices"][0]["text"] for c in chunks) == case["text"]
