"""HF interop on randomly initialised tiny models (tests/hf_fixtures.py): megatron logits equal `transformers`
logits after import; an export (sharded, in the model's dtype) loads back in `transformers` with the same logits
and config; settings the converter cannot express are refused; a run's imported shape is enforced."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from hf_fixtures import make_hf_checkpoint, special_ids  # noqa: E402

from rpt.config import HFConfig, ModelConfig  # noqa: E402
from rpt.model.build import build_model  # noqa: E402
from rpt.model.forward import full_logits  # noqa: E402
from rpt.model.hf import export_hf, hf_to_megatron, import_hf, model_config_from_hf, shard_bytes  # noqa: E402
from rpt.model.hf_config import check_imported_shape, export_architecture, write_shape_record  # noqa: E402
from rpt.rundir import RunDir  # noqa: E402
from tests.helpers import rpt_command, run_command  # noqa: E402

ARCHS = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def _tokens(vocab: int, shape=(2, 17), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _imported(path, dtype=torch.float32):
    mc = model_config_from_hf(path)
    model = build_model(ModelConfig(**mc), mc["vocab_size"], dtype)
    import_hf(model, path)
    return model.eval(), mc


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_import_matches_transformers_and_export_round_trips(kind, tmp_path, runtime):
    ckpt = make_hf_checkpoint(tmp_path / kind, kind, "qwen_instruct" if kind == "qwen2" else "r1")
    model, mc = _imported(ckpt.path)
    assert mc["qkv_bias"] == (kind == "qwen2") and mc["tie_embeddings"] == (kind == "qwen2")
    tokens = _tokens(ckpt.vocab_size)
    with torch.no_grad():
        ours = full_logits(model, tokens)
        theirs = ckpt.model(tokens).logits.float()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    out = export_hf(model, mc, tmp_path / "exported", ARCHS[kind], tokenizer_dir=ckpt.path)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()  # < 5GB
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits.float(), theirs, atol=1e-5, rtol=1e-5)
    assert {k: v for k, v in model_config_from_hf(out).items() if k != "name"} == \
        {k: v for k, v in mc.items() if k != "name"}


def test_bf16_export_is_sharded_in_bf16_and_loads_in_transformers(tmp_path, runtime):
    ckpt = make_hf_checkpoint(tmp_path / "src", "qwen2", "r1", tie_word_embeddings=False)
    model, mc = _imported(ckpt.path, torch.bfloat16)
    ids = special_ids(ckpt.path, "r1")
    out = export_hf(model, mc, tmp_path / "out", "Qwen2ForCausalLM", tokenizer_dir=ckpt.path, max_shard_size="40KB",
                    special_ids={"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": -1})

    shards = sorted(out.glob("model-*-of-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) >= 2 and sorted(set(index["weight_map"].values())) == [s.name for s in shards]
    assert not (out / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["eos_token_id"] == ids["eos"] and "pad_token_id" not in config
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["bos_token_id"] == ids["bos"] and generation["eos_token_id"] == ids["eos"]
    assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == torch.bfloat16
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id == ids["eos"]
    tokens = _tokens(ckpt.vocab_size)
    with torch.no_grad():
        ours = full_logits(model, tokens).float()
        theirs = reloaded(tokens).logits.float()
    torch.testing.assert_close(theirs, ours, atol=0.05, rtol=0.05)  # both bf16: rounding differs per kernel
    assert {k: v for k, v in model_config_from_hf(out).items() if k != "name"} == \
        {k: v for k, v in mc.items() if k != "name"}


def test_shard_size_parsing_and_config_validation():
    assert shard_bytes("5GB") == 5 * 10**9 and shard_bytes("40KB") == 40_000 and shard_bytes(1234) == 1234
    assert shard_bytes("1.5 mb") == 1_500_000
    for bad in ("big", "0GB", "-3MB", "5 GiB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            HFConfig(max_shard_size=bad)
    with pytest.raises(ValueError, match="hf.architecture"):
        HFConfig(architecture="GPT2LMHeadModel")


def _qwen2_config(**changes) -> dict:
    cfg = transformers.Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2).to_dict()
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    return {**cfg, **changes}


@pytest.mark.parametrize("changes, named", [
    ({"architectures": ["GPT2LMHeadModel"]}, "architecture 'GPT2LMHeadModel'.*LlamaForCausalLM, Qwen2ForCausalLM"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}, "rope_parameters"),
    ({"head_dim": 16}, "head_dim=16 != hidden_size/num_attention_heads=8"),
    ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"architectures": ["LlamaForCausalLM"], "attention_bias": True}, "attention_bias=true"),
    ({"architectures": ["LlamaForCausalLM"], "mlp_bias": True}, "mlp_bias=true"),
])
def test_unsupported_settings_are_refused(tmp_path, changes, named):
    (tmp_path / "config.json").write_text(json.dumps(_qwen2_config(**changes)))
    with pytest.raises(ValueError, match=f"unsupported by rpt's converter: .*{named}"):
        model_config_from_hf(tmp_path)


def test_supported_settings_pass(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_qwen2_config(
        rope_scaling=None, head_dim=8, use_sliding_window=False, sliding_window=4096)))
    assert model_config_from_hf(tmp_path)["hidden_size"] == 32


def test_weights_the_model_cannot_express_are_refused():
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=False))
    tensors = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    mc = dict(num_layers=1, num_attention_heads=2, num_query_groups=1, qkv_bias=True, tie_embeddings=False)
    hf_to_megatron(tensors, mc)  # every tensor consumed: fine
    with pytest.raises(ValueError, match="cannot express.*layers.0.self_attn.o_proj.bias"):
        hf_to_megatron({**tensors, "layers.0.self_attn.o_proj.bias": torch.zeros(16)}, mc)
    with pytest.raises(ValueError, match="cannot express.*layers.0.self_attn.q_proj.bias"):
        hf_to_megatron(tensors, {**mc, "qkv_bias": False})
    with pytest.raises(ValueError, match="tie_word_embeddings=true but lm_head.weight differs"):
        hf_to_megatron(tensors, {**mc, "tie_embeddings": True})
    tied = {**tensors, "lm_head.weight": tensors["embed_tokens.weight"].clone()}
    assert "output_layer.weight" not in hf_to_megatron(tied, {**mc, "tie_embeddings": True})
    with pytest.raises(ValueError, match="tie_word_embeddings=false but the checkpoint has no lm_head"):
        hf_to_megatron({k: t for k, t in tensors.items() if k != "lm_head.weight"}, mc)


def test_export_refuses_an_architecture_that_cannot_hold_the_model(tmp_path, runtime):
    mc = dict(name="t", num_layers=1, hidden_size=16, ffn_hidden_size=24, num_attention_heads=2, num_query_groups=1,
              norm_epsilon=1e-6, qkv_bias=False, tie_embeddings=True, rotary_base=10000, max_position_embeddings=64,
              vocab_size=40)
    model = build_model(ModelConfig(**mc), 40)  # (Llama holds QKV bias as attention_bias: the sentencepiece test)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM always has QKV bias"):
        export_hf(model, mc, tmp_path / "out", "Qwen2ForCausalLM")
    assert not (tmp_path / "out").exists()


def test_a_run_with_an_import_refuses_another_shape_before_building(tmp_path, runtime):
    from rpt.model.loading import load_eval_model

    rd = RunDir(tmp_path, "run")
    imported = dict(ModelConfig(num_layers=2, hidden_size=32, vocab_size=448).__dict__)
    check_imported_shape(ModelConfig(), rd, 448)  # no import in this run: nothing to compare
    write_shape_record(rd, "/models/x", imported, "LlamaForCausalLM")
    check_imported_shape(ModelConfig(num_layers=2, hidden_size=32, vocab_size=448), rd)
    check_imported_shape(ModelConfig(num_layers=2, hidden_size=32), rd, 448)  # vocabulary from the tokenizer
    with pytest.raises(ValueError, match=r"model.hidden_size=64 here but 32 in the import.*"
                                         r"model.vocab_size=405 here but 448.*model.hidden_size=32"):
        check_imported_shape(ModelConfig(num_layers=2, hidden_size=64), rd, 405)
    # the stages' model loading checks first: a shape error, not "no checkpoint" nor a megatron mismatch
    with pytest.raises(ValueError, match="model.num_layers=3 here but 2 in the import"):
        load_eval_model(ModelConfig(num_layers=3, hidden_size=32, vocab_size=448), runtime, rd, "hf", 448)


def test_hf_import_refuses_a_model_config_that_differs_from_config_json(tmp_path):
    from rpt.stages.hf_import import check_model_config

    ckpt = make_hf_checkpoint(tmp_path / "src", "qwen2", "qwen_base")
    hf_cfg = model_config_from_hf(ckpt.path)
    matching = ModelConfig(**{k: v for k, v in hf_cfg.items() if k != "name"})
    check_model_config(matching, hf_cfg, ckpt.tokenizer_vocab, ckpt.path)
    with pytest.raises(ValueError, match=r"model.num_layers=4 \(config\) vs 2 \(config.json\).*model.num_layers=2"):
        check_model_config(ModelConfig(**{**matching.__dict__, "num_layers": 4}), hf_cfg, ckpt.tokenizer_vocab,
                           ckpt.path)
    unset_vocab = ModelConfig(**{**matching.__dict__, "vocab_size": None})  # would build with the tokenizer's 40x
    with pytest.raises(ValueError, match=f"model.vocab_size={ckpt.tokenizer_vocab} .*vs {ckpt.vocab_size}"):
        check_model_config(unset_vocab, hf_cfg, ckpt.tokenizer_vocab, ckpt.path)
    with pytest.raises(ValueError, match="the tokenizer defines"):
        check_model_config(matching, {**hf_cfg, "vocab_size": 100}, ckpt.tokenizer_vocab, ckpt.path)


def _cli(args: list[str], tmp_path, nproc: int = 1):
    return run_command(rpt_command(*args, f"run.root={tmp_path}", "run.name=imp", "logging=disabled", nproc=nproc),
                       tmp_path, check=False, timeout=300)


@pytest.mark.e2e
@pytest.mark.multiprocess
@pytest.mark.parametrize("import_tp", [1, 2])
def test_cli_import_then_export_round_trip(tmp_path, import_tp):
    """`rpt hf_import hf.path=...` with nothing else to say: the shape, context length included, comes from
    config.json into the run's config (so every later stage builds it) and the model is named by its own name; it
    writes a megatron dist-checkpoint (sharded over 2 tensor-parallel processes when import_tp=2); `rpt hf_export`
    in one process turns it back into an HF checkpoint that transformers loads with the original logits and the
    original context length."""
    ckpt = make_hf_checkpoint(tmp_path / "SmolTest-Instruct", "qwen2", "qwen_instruct", max_position_embeddings=1024)
    proc = _cli(["hf_import", f"hf.path={ckpt.path}", f"run.tensor_parallel={import_tp}"], tmp_path, nproc=import_tp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "imp/checkpoints/hf/model.json").read_text())["model"]["vocab_size"] == 448
    saved = yaml.safe_load((tmp_path / "imp/config.yaml").read_text())["model"]
    expected = {k: v for k, v in model_config_from_hf(ckpt.path).items() if k != "name"}
    assert {k: saved[k] for k in expected} == expected and saved["max_position_embeddings"] == 1024
    assert saved["name"] == "SmolTest-Instruct"
    proc = _cli(["hf_export", "hf.source=hf", f"hf.export_dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_position_embeddings"] == 1024
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokens = _tokens(ckpt.vocab_size, (1, 9), seed=2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, ckpt.model(tokens).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.e2e
def test_cli_import_refuses_a_chosen_shape_the_checkpoint_contradicts_in_one_line(tmp_path):
    """A chosen ``model`` field (an override, or a preset's) that differs from config.json is refused in one line
    with status 2 before anything is imported; a shorter context than the checkpoint's is a choice, not a mistake."""
    ckpt = make_hf_checkpoint(tmp_path / "src", "llama", "r1")
    proc = _cli(["hf_import", f"hf.path={ckpt.path}", "model.num_layers=4"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "rpt: hf_import") and "model.num_layers=4 (chosen) but config.json says 2" in proc.stderr
    assert not (tmp_path / "imp" / "checkpoints").exists()
    proc = _cli(["hf_import", f"hf.path={ckpt.path}", "experiment=rpt_r1_distill_1_5b"], tmp_path)
    assert proc.returncode == 2 and "model.num_layers=28 (chosen) but config.json says 2" in proc.stderr
    proc = _cli(["hf_import", f"hf.path={tmp_path / 'nowhere'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_export_writes_the_imported_architecture_unless_told_otherwise(tmp_path):
    from rpt.config import ModelConfig

    rd = RunDir(tmp_path, "run")
    assert export_architecture(None, rd, qkv_bias=True) == "Qwen2ForCausalLM"  # no import: from the QKV bias
    assert export_architecture(None, rd, qkv_bias=False) == "LlamaForCausalLM"
    write_shape_record(rd, "/models/x", dict(ModelConfig(qkv_bias=False).__dict__), "LlamaForCausalLM")
    assert export_architecture(None, rd, qkv_bias=False) == "LlamaForCausalLM"
    assert export_architecture("Qwen2ForCausalLM", rd, qkv_bias=False) == "Qwen2ForCausalLM"


def test_a_sentencepiece_run_exports_a_tokenizer_transformers_loads_as_the_same(tmp_path, runtime):
    """`hf_export` of a run with the sentencepiece tokenizer (the demo's: digit groups of 2) writes a tokenizer.json
    that `AutoTokenizer` loads as the same tokenizer: the ids of 1,000 demo documents (and awkward strings) equal
    sentencepiece's, decoding gives the text back, no special id is added or lies outside the embedding, and
    `transformers`' greedy generation from the export equals rpt's greedy rollout token for token."""
    from data_prep.demo_corpus import generate_documents
    from data_prep.tokenizer_train import train_tokenizer
    from rpt.model import cpu_compat
    from rpt.rollout.engine import SamplingParams, generate
    from rpt.tokenizer import Tokenizer
    from tests.conftest import demo_data_cfg

    docs = generate_documents(demo_data_cfg(digit_group=2), 1000, 0.75, seed=0)
    awkward = ["1 + 2 = ", "  two  spaces\tand\ttabs\n\n", "unicode é 数学 ∑x² — naïve café 🙂", "12345 = 99"]
    rd = RunDir(tmp_path, "run")
    tok = Tokenizer(train_tokenizer(docs[:300], rd.tokenizer, 420, "bpe", digit_group=2))
    cpu_compat.seed_all(0)
    mc = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2)
    assert mc.qkv_bias  # the demo's models: exported as Llama with attention_bias (transformers pairs qwen2 with
    architecture = export_architecture(None, rd, mc.qkv_bias)  # its own byte-level tokenizer, whatever we write)
    assert architecture == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="cannot carry this run's sentencepiece tokenizer"):
        export_architecture("Qwen2ForCausalLM", rd, mc.qkv_bias)
    model = build_model(mc, tok.vocab_size, torch.float32).eval()
    special = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    out = export_hf(model, {**mc.__dict__, "vocab_size": tok.vocab_size}, tmp_path / "out", architecture,
                    tokenizer_dir=rd.tokenizer, special_ids=special)

    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in docs + awkward:
        ids = theirs(text)["input_ids"]
        assert ids == tok.encode(text), text
        assert theirs.decode(ids) == text
    assert theirs("1 + 2 = ")["input_ids"] == tok.encode("1 + 2 = ") and len(tok.encode("1 + 2 = ")) == 6
    assert max(theirs.all_special_ids) < tok.vocab_size and theirs.eos_token_id == tok.eos_id

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = _tokens(tok.vocab_size)
    with torch.no_grad():  # the QKV bias survives as Llama's attention_bias (o_proj bias 0)
        torch.testing.assert_close(hf_model(tokens).logits, full_logits(model, tokens), atol=1e-5, rtol=1e-5)
    prompt = tok.encode(docs[1][:40])
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    ours = generate(model, [prompt], greedy, 0, torch.device("cpu")).response_ids(0)
    with torch.no_grad():
        hf_ids = hf_model.generate(torch.tensor([theirs(docs[1][:40])["input_ids"]]), do_sample=False,
                                   max_new_tokens=16, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    assert hf_ids[0, len(prompt):].tolist()[:len(ours)] == list(ours) and len(ours) > 0
