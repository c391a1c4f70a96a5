"""HF interop on randomly initialised tiny models: megatron logits equal `transformers` logits after import, and
an exported checkpoint loads back in `transformers` with the same logits (transformers is a test dependency)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rpt.config import ModelConfig  # noqa: E402
from rpt.model.build import build_model  # noqa: E402
from rpt.model.forward import full_logits  # noqa: E402
from rpt.model.hf import export_hf, import_hf, model_config_from_hf  # noqa: E402

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)


def _hf_model(kind: str, tmp_path):
    torch.manual_seed(0)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=10000.0)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=500000.0,
                                       attention_bias=False)
        model = transformers.LlamaForCausalLM(cfg)
    model.eval()
    with torch.no_grad():  # random norms too, so a swapped norm weight cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / kind
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_import_matches_transformers_and_export_round_trips(kind, tmp_path, runtime):
    hf, path = _hf_model(kind, tmp_path)
    mc = model_config_from_hf(path)
    assert mc["qkv_bias"] == (kind == "qwen2") and mc["tie_embeddings"] == (kind == "qwen2")
    model = build_model(ModelConfig(**mc), mc["vocab_size"])
    import_hf(model, path)
    model.eval()
    tokens = torch.randint(0, COMMON["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = full_logits(model, tokens)
        theirs = hf(tokens).logits.float()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    out = export_hf(model, mc, tmp_path / "exported", "Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits.float(), theirs, atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ValueError, match="unsupported architecture"):
        model_config_from_hf(tmp_path)


@pytest.mark.e2e
@pytest.mark.multiprocess
@pytest.mark.parametrize("import_tp", [1, 2])
def test_cli_import_then_export_round_trip(tmp_path, import_tp):
    """`rpt hf_import` writes a megatron dist-checkpoint (sharded over 2 tensor-parallel processes when
    import_tp=2); `rpt hf_export` in one process turns it back into an HF checkpoint that transformers loads with
    the original logits."""
    import subprocess
    import sys

    hf, path = _hf_model("qwen2", tmp_path)
    mc = model_config_from_hf(path)
    model_overrides = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in mc.items()
                       if k != "name"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launch = {"hf_import": torchrun if import_tp == 2 else [sys.executable], "hf_export": [sys.executable]}
    for stage, extra in [("hf_import", [f"hf.path={path}", f"run.tensor_parallel={import_tp}"]),
                         ("hf_export", ["hf.source=hf", f"hf.export_dir={tmp_path / 'out'}"])]:
        proc = subprocess.run([*launch[stage], "-m", "rpt.cli", stage, f"run.root={tmp_path}", "run.name=imp",
                               "logging=disabled", *model_overrides, *extra], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokens = torch.randint(0, COMMON["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, hf(tokens).logits, atol=1e-5, rtol=1e-5)
