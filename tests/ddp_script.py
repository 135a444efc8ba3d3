"""Run by tests/test_finetune.py under 2-process DDP (Lightning relaunches this script for
rank 1). Each rank fine-tunes, then reports its weights' digest and tries to save."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from headstart import Classifier
from headstart.fit.finetune import FinetuneConfig, is_rank_zero

data, out = sys.argv[1], Path(sys.argv[2])
cfg = FinetuneConfig(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp",
                     augment="none", image_size=64, batch_size=4, num_workers=0)
clf = Classifier(head="linear", finetune="all", finetune_config=cfg).fit(data)
rank = int(os.environ.get("LOCAL_RANK", "0"))
clf.save(out / f"model-rank{rank}")
(out / f"rank{rank}.json").write_text(json.dumps({
    "digest": clf.summary_.finetune.weights_digest,
    "global_zero": is_rank_zero(),
    "world_size": dist.get_world_size() if dist.is_initialized() else 1}))
