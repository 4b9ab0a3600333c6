"""Session 25's six-seed grid (uncomp = beta 1.5, snapkv, full) with its chat cells replaced by session 26's
chat answers under new_turns="recall", as one file for table.py:

    python docs/fidelity/chat_recall_s26_gpu/combine.py OUT.json
    python docs/fidelity/layer_split_s24/table.py --own OUT.json
"""
import json
import sys

RENAME = {"depth-b1.5 0.05": "uncomp 0.05", "depth-b1.5 0.1": "uncomp 0.1",  # beta 1.5 is uncomp's default now
          "snapkv 0.05": "snapkv 0.05", "snapkv 0.1": "snapkv 0.1", "full": "full"}
records = []
for path in ("docs/fidelity/layer_split_s25_gpu/seeds012.json", "docs/fidelity/layer_split_s25_gpu/seeds345.json"):
    records += [dict(r, setting=RENAME[r["setting"]]) for r in json.load(open(path))["records"]
                if r["setting"] in RENAME and r["task"] != "chat"]
records += json.load(open("docs/fidelity/chat_recall_s26_gpu/chat_recall.json"))["records"]
json.dump({"args": {"built_by": "docs/fidelity/chat_recall_s26_gpu/combine.py"}, "records": records}, open(sys.argv[1], "w"))
