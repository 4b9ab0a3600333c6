"""K+V bytes held and allocated with and without shrink_cache, on the default model (CPU).

    python tools/shrink_memory.py

A 2.2k-token passkey prompt with 700 generated tokens, then a two-turn chat; prints the stats after
each and whether the greedy texts match.
"""

import sys
from pathlib import Path

import pyuncomp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_engine import passkey_prompt  # noqa: E402


def main():
    path = str(pyuncomp.resolve_model(None))
    texts = {}
    for shrink in (False, True):
        llm = pyuncomp.Llama(path, n_ctx=4096, method="uncomp", ratio=0.05, shrink_cache=shrink, seed=0, verbose=False)
        out = llm(passkey_prompt(90, 0.3, "53812"), max_tokens=700, temperature=0.0)["choices"][0]["text"]
        st = llm.compression_stats()
        print(f"shrink_cache={shrink}: after prompt + 700 tokens: held {st['kv_bytes']} B, allocated {st['kv_bytes_allocated']} B")
        msgs = [{"role": "user", "content": passkey_prompt(60, 0.5, "11223")}]
        a1 = llm.create_chat_completion(messages=msgs, max_tokens=16, temperature=0.0)["choices"][0]["message"]["content"]
        msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": "Say it again. What is the pass key?"}]
        a2 = llm.create_chat_completion(messages=msgs, max_tokens=16, temperature=0.0)["choices"][0]["message"]["content"]
        st = llm.compression_stats()
        print(f"shrink_cache={shrink}: after a two-turn chat: held {st['kv_bytes']} B, allocated {st['kv_bytes_allocated']} B")
        texts[shrink] = (out, a1, a2)
        llm.close()
    print("same greedy text:", texts[False] == texts[True])


if __name__ == "__main__":
    main()
