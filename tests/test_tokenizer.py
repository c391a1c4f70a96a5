"""The tokenizer is lossless and exposes exact per-token bytes (the reward depends on both)."""

import pytest


@pytest.mark.parametrize("text", [
    "4 - 1 + 7 = <think> 4 - 1 = 3 , 3 + 7 = 10 </think> \\boxed{10} 10\n",
    "unicode é 数学 ∑x² — naïve café 🙂",
    "   leading spaces, trailing   \n\n\ttabs\t\t and runs     of spaces ",
    "$\\int_0^1 x^2\\,dx = \\frac{1}{3}$ and \\boxed{\\frac{1}{3}}",
    "",
])
def test_round_trip_and_bytes(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.bytes_of(ids) == text.encode("utf-8")


def test_think_markers_are_single_tokens(tokenizer):
    for marker in ("<think>", "</think>"):
        assert len(tokenizer.encode(marker)) == 1


def test_missing_model_is_a_clear_error(tmp_path):
    from rpt.tokenizer import Tokenizer

    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "nope.model")


TEXTS = ["unicode é 数学 ∑x² — naïve café 🙂", "  two  spaces\tand\ttabs\n\n", "$\\frac{a}{b} = \\sqrt{x^2}$ 12345"]


def _byte_level_bpe(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_byte_level_tokenizer_round_trip_and_bytes(tmp_path):
    from rpt.tokenizer import load_tokenizer

    _byte_level_bpe(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == tok.encode("<|endoftext|>")[0]
    for text in TEXTS + ["never seen: ζ ∫ 漢字 \u200b"]:
        ids = tok.encode(text)
        assert tok.bytes_of(ids) == text.encode("utf-8")
        assert tok.decode(ids) == text
