"""Session 27's head-split variants (seeds 0-2, chat recalled) beside the same seeds' recorded full, snapkv and
uncomp answers (session 25's grid with session 26's recalled chat cells), as one file for table.py:

    python docs/fidelity/chat_recall_s26_gpu/combine.py /tmp/c.json
    python docs/fidelity/heads_s27_gpu/combine.py /tmp/c.json /tmp/heads.json
    python docs/fidelity/layer_split_s24/table.py --own /tmp/heads.json
"""
import json
import sys

base = [r for r in json.load(open(sys.argv[1]))["records"] if r["seed"] in (0, 1, 2)]
heads = json.load(open("docs/fidelity/heads_s27_gpu/heads_s012.json"))["records"]
json.dump({"args": {"built_by": "docs/fidelity/heads_s27_gpu/combine.py"}, "records": base + heads}, open(sys.argv[2], "w"))
