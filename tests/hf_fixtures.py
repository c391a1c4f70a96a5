"""Tiny Hugging Face checkpoints made locally for tests (nothing is downloaded).

``make_hf_checkpoint(dir, arch, style)`` writes what a real Qwen2.5 / R1-Distill / Llama checkpoint directory holds:
``config.json`` + safetensors of a random ``transformers`` model, a byte-level BPE ``tokenizer.json`` trained here
with ``tokenizers`` (its vocabulary covers digits, ``<think>``, ``</think>``, ``\\boxed{`` and ``}``), a
``tokenizer_config.json`` in the hub's format (special tokens, added-tokens table, inline chat template) and a
``generation_config.json`` with the bos/eos ids. The model's vocabulary is padded past the tokenizer's, as Qwen's
is (151,936 embedding rows for 151,665 tokens), so ids outside the tokenizer exist.

Styles mirror the real special-token setups: ``qwen_base`` (eos ``<|endoftext|>``, no bos), ``qwen_instruct``
(eos ``<|im_end|>``, ChatML template) and ``r1`` (bos/eos ``<｜begin▁of▁sentence｜>`` / ``<｜end▁of▁sentence｜>``,
the R1-Distill user/assistant markers and ``<think>`` in the generation prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
R1_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}"
)

R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
STYLES = {  # special tokens (in id order), bos, eos, pad, chat template
    "qwen_base": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|endoftext|>",
                      pad="<|endoftext|>", template=CHATML_TEMPLATE),
    "qwen_instruct": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                          pad="<|endoftext|>", template=CHATML_TEMPLATE),
    "r1": dict(specials=[R1_EOS, R1_BOS, "<｜User｜>", "<｜Assistant｜>"], bos=R1_BOS, eos=R1_EOS, pad=R1_EOS,
               template=R1_TEMPLATE),
}
NON_SPECIAL_ADDED = ["<think>", "</think>"]  # added tokens that are text (R1-Distill's are), one id each

TRAINING_TEXTS = [
    "4 + 7 = <think> 4 + 7 = 11 </think> \\boxed{11}",
    "12 - 5 + 30 = <think> 12 - 5 = 7 , 7 + 30 = 37 </think> \\boxed{37}",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 -2 x^2 \\frac{1}{3} \\sqrt{2}",
    "The next token may begin with a space. Put your final answer in \\boxed{}.",
    "### Context\nComplete the given text by predicting the next token, and reason step by step.",
    "unicode é 数学 ∑x² — naïve café 🙂 \t tabs\n\nnew lines",
]


@dataclass
class HFCheckpoint:
    path: Path  # the checkpoint directory
    model: torch.nn.Module  # the transformers model whose weights were saved (eval mode)
    tokenizer_vocab: int  # ids the tokenizer defines (base vocabulary + added tokens)
    vocab_size: int  # the model's embedding rows (>= tokenizer_vocab)
    style: str  # key of STYLES


def train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on TRAINING_TEXTS, special tokens first (ids 0..)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAINING_TEXTS * 20, trainer)
    return tok


def write_tokenizer(directory: str | Path, style: str = "qwen_instruct", chat_template: bool = True,
                    template_file: bool = False) -> int:
    """Write tokenizer.json + tokenizer_config.json (hub format) for ``style``; returns the tokenizer's id count.
    ``template_file``: the chat template goes to ``chat_template.jinja`` (transformers >= 4.5x layout) instead of
    inline in tokenizer_config.json; ``chat_template=False`` writes none."""
    from tokenizers import AddedToken

    spec = STYLES[style]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED])
    tok.save(str(directory / "tokenizer.json"))
    decoder = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                         "single_word": False, "special": t in spec["specials"]}
               for t in spec["specials"] + NON_SPECIAL_ADDED}
    config = {"add_bos_token": spec["bos"] is not None, "add_eos_token": False, "added_tokens_decoder": decoder,
              "bos_token": spec["bos"], "eos_token": spec["eos"], "pad_token": spec["pad"],
              "clean_up_tokenization_spaces": False, "model_max_length": 4096,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template and template_file:
        (directory / "chat_template.jinja").write_text(spec["template"])
    elif chat_template:
        config["chat_template"] = spec["template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return tok.get_vocab_size(with_added_tokens=True)


def special_ids(directory: str | Path, style: str) -> dict[str, int | None]:
    """The bos/eos/pad ids ``style``'s tokens have in the tokenizer written to ``directory``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    spec = STYLES[style]
    return {k: (tok.token_to_id(spec[k]) if spec[k] else None) for k in ("bos", "eos", "pad")}


def make_hf_checkpoint(directory: str | Path, arch: str = "qwen2", style: str = "qwen_instruct", *,
                       chat_template: bool = True, template_file: bool = False, dtype: torch.dtype = torch.float32,
                       seed: int = 0, hidden_size: int = 32, intermediate_size: int = 48, num_hidden_layers: int = 2,
                       num_attention_heads: int = 4, num_key_value_heads: int = 2,
                       tie_word_embeddings: bool | None = None, **config_extra) -> HFCheckpoint:
    """A random ``arch`` (qwen2 | llama) model saved with ``style``'s tokenizer files and generation config.
    Norms and biases are randomised too, so a swapped or dropped one changes the logits."""
    import transformers

    directory = Path(directory)
    tokenizer_vocab = write_tokenizer(directory, style, chat_template, template_file)
    ids = special_ids(directory, style)
    vocab_size = (tokenizer_vocab // 64 + 1) * 64  # padded embedding, always larger than the tokenizer
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                  num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                  num_key_value_heads=num_key_value_heads, rms_norm_eps=1e-6, bos_token_id=ids["bos"],
                  eos_token_id=ids["eos"], **{"max_position_embeddings": 256, **config_extra})
    torch.manual_seed(seed)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True if tie_word_embeddings is None
                                       else tie_word_embeddings, rope_theta=10000.0)
        model = transformers.Qwen2ForCausalLM(cfg)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=bool(tie_word_embeddings), rope_theta=500000.0)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"arch must be qwen2 or llama, got {arch!r}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(dtype).eval()
    model.save_pretrained(directory, safe_serialization=True)
    eos = [ids["eos"], ids["pad"]] if style == "qwen_instruct" else ids["eos"]  # Qwen2.5-Instruct lists both
    transformers.GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"]
                                  ).save_pretrained(directory)
    return HFCheckpoint(directory, model, tokenizer_vocab, vocab_size, style)


def model_overrides(path: str | Path) -> list[str]:
    """``model.<field>=<value>`` CLI overrides that match the checkpoint at ``path`` (its config.json)."""
    from rpt.model.hf import model_config_from_hf

    mc = model_config_from_hf(path)
    return [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in mc.items() if k != "name"]
