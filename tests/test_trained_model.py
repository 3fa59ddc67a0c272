"""The trained model the README's BM25 + key-token results come from rebuilds from its committed parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "models" / "scifact-prompteol"


@pytest.mark.slow
def test_scifact_model_rebuilds_from_its_trained_parameters(smollm2, tmp_path: Path) -> None:
    from keytok.models.loading import load_model

    out = tmp_path / "scifact-prompteol"
    subprocess.run(
        [sys.executable, "experiments/rebuild_trained.py", str(RUN), "--out", str(out)], cwd=ROOT, check=True
    )
    trained = load_model(str(out))
    record = json.loads((RUN / "keytok.json").read_text())
    # the fusion weights chosen for it travel with it, and the method it was trained with is recorded
    assert trained.recorded_fusion == record["fusion"]
    assert trained.recorded_method == record["method"]
    base = dict(smollm2.model.named_parameters())
    new = dict(trained.model.named_parameters())
    # LoRA touched every layer's projections, the final norm trained, the LM head (tied embeddings) did not
    for i in record["trained_layers"]:
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        assert not torch.equal(base[name], new[name]), name
    assert not torch.equal(base["model.norm.weight"], new["model.norm.weight"])
    assert torch.equal(smollm2.lm_head_weight, trained.lm_head_weight)
