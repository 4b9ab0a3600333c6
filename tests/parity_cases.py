"""Requests replayed on stock llama-cpp-python (tools/record_stock_outputs.py) and on pyuncomp."""

N_CTX = 2048
MAX_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "List three primary colors:\n1.",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of Germany?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "My name is Ada. Remember it."},
     {"role": "assistant", "content": "Noted, Ada."},
     {"role": "user", "content": "What is my name?"}],
]
