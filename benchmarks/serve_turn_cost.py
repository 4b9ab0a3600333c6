"""What a chat's second request costs a `pyuncomp serve` under each --new-turns mode: the seconds to the
whole (short) answer and the tokens the server evaluated for it (`usage.compression.evaluated_tokens`). The
first request is a long document (SmolLM2's chat task haystack) with a short note; the second sends the
history back with the answer and a question, as a chat client does.

    python benchmarks/serve_turn_cost.py [--model M] [--length 4096] [--ratio 0.1] [--threads 2]
"""
import argparse
import socket
import subprocess
import sys
import time
import urllib.request

import openai

import pyuncomp  # noqa: I001
from pyuncomp.eval.tasks import make_samples

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="smollm2-135m")
ap.add_argument("--length", type=int, default=4096)
ap.add_argument("--ratio", type=float, default=0.1)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()

llm = pyuncomp.Llama(str(pyuncomp.resolve_model(args.model)), vocab_only=True, verbose=False)
sample = make_samples("chat", args.length, [0.5], 1, 0, lambda text: len(llm.tokenize(text.encode(), add_bos=False)))[0]
for mode in ("reevaluate", "recall"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "pyuncomp", "serve", "--model", args.model, "--ratio", str(args.ratio),
                               "--n-ctx", str(args.length + 1024), "--threads", str(args.threads), "--port", str(port),
                               "--new-turns", mode], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5)
            break
        except OSError:
            if server.poll() is not None:
                sys.exit(f"the {mode} server exited with code {server.returncode}")
            time.sleep(0.5)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x")
    chat = [{"role": "user", "content": sample.prompt}]
    t0 = time.perf_counter()
    first = client.chat.completions.create(model=args.model, messages=chat, max_tokens=8, temperature=0)
    t1 = time.perf_counter()
    chat += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": sample.followup}]
    second = client.chat.completions.create(model=args.model, messages=chat, max_tokens=16, temperature=0)
    t2 = time.perf_counter()
    print(f"{mode:10s} first request {t1 - t0:6.2f} s ({first.usage.prompt_tokens} prompt tokens); second request "
          f"{t2 - t1:6.2f} s, {second.usage.compression['evaluated_tokens']} tokens evaluated for its "
          f"{second.usage.prompt_tokens}-token prompt and {second.usage.completion_tokens} generated ones; answer "
          f"{second.choices[0].message.content!r}",
          flush=True)
    server.terminate()
    server.wait(timeout=30)
