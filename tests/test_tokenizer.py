"""The tokenizer is lossless and exposes exact per-token bytes (the reward depends on both); an imported HF
tokenizer takes its special tokens and chat template from its own config files."""

import json

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


def test_digit_groups_make_numbers_whole_tokens_and_stay_lossless(tmp_path):
    """``data.digit_group=2``: every number below 100 is one token (no position falls inside it), longer numbers
    are cut left to right into pairs, and the text still round-trips byte for byte."""
    from data_prep.demo_corpus import generate_documents
    from data_prep.tokenizer_train import train_tokenizer
    from rpt.config import DataConfig
    from rpt.tokenizer import Tokenizer
    from tests.conftest import demo_data_cfg

    docs = generate_documents(demo_data_cfg(), 200, 0.5, seed=0)
    grouped = Tokenizer(train_tokenizer(docs, tmp_path / "g2", 420, "bpe", digit_group=2))
    single = Tokenizer(train_tokenizer(docs, tmp_path / "g1", 320, "bpe"))

    def pieces(tok, text):
        return [tok.token_bytes(i) for i in tok.encode(text)]

    assert pieces(grouped, "5 + 9 + 7 = 21\n")[-2:] == [b"21", b"\n"]
    assert pieces(single, "5 + 9 + 7 = 21\n")[-3:] == [b"2", b"1", b"\n"]
    assert [p for p in pieces(grouped, "x 12345 07") if p.strip()][-4:] == [b"12", b"34", b"5", b"07"]
    for text in docs[:20] + ["1000000 and 9, 99, 100\n"]:
        assert grouped.decode(grouped.encode(text)) == text
    with pytest.raises(ValueError, match="data.vocab_size >= 1400"):
        DataConfig(digit_group=3, vocab_size=1000)
    with pytest.raises(ValueError, match="data.digit_group must be one of"):
        DataConfig(digit_group=4)


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


# --- an imported HF tokenizer's own special tokens and chat template (tests/hf_fixtures.py) -----------------------

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("style, eos", [("qwen_base", "<|endoftext|>"), ("qwen_instruct", "<|im_end|>"),
                                        ("r1", "<｜end▁of▁sentence｜>")])
def test_special_tokens_come_from_the_tokenizer_config(tmp_path, style, eos):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, style)
    tok = load_tokenizer(tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.eos_id == reference.eos_token_id == tok.tok.token_to_id(eos)
    assert tok.bos_id == (-1 if reference.bos_token_id is None else reference.bos_token_id)
    assert tok.pad_id == reference.pad_token_id


def test_special_ids_fall_back_to_generation_config(tmp_path):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, "r1")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for role in ("bos", "eos", "pad"):
        config.pop(f"{role}_token")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 7, "eos_token_id": [9, 8]}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (7, 9, 9)  # the first eos; pad defaults to eos


def test_a_special_token_the_vocabulary_lacks_is_a_clear_error(tmp_path):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, "qwen_base")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match="eos_token '<\\|nope\\|>'"):
        load_tokenizer(tmp_path)


def test_ids_past_the_tokenizer_decode_as_nothing_and_log_once(tmp_path, caplog, tokenizer):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, "qwen_instruct")
    hf_tok = load_tokenizer(tmp_path)
    for tok in (hf_tok, tokenizer):  # imported and sentencepiece alike
        ids = tok.encode("4 + 7 = 11")
        padded_row = tok.vocab_size + 5  # a row of a padded embedding: the model can sample it
        with caplog.at_level("WARNING", logger="rpt.tokenizer"):
            assert tok.decode([*ids, padded_row, tok.vocab_size]) == "4 + 7 = 11"
            assert tok.token_bytes(padded_row) == b""
        assert sum("outside the tokenizer" in r.message for r in caplog.records) == 1
        caplog.clear()


@pytest.mark.parametrize("style, template_file", [("qwen_instruct", False), ("r1", False), ("r1", True)])
def test_chat_template_renders_as_transformers_does(tmp_path, style, template_file):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, style, template_file=template_file)
    tok = load_tokenizer(tmp_path)
    text = "### Context\n4 + 7 = <think>"
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    assert tok.chat_prompt(text) == reference
    assert reference.count(text) == 1 and reference != text  # the template did wrap it


def test_chat_template_option_changes_the_prompt_ids_around_the_context(tmp_path, tokenizer):
    from hf_fixtures import write_tokenizer

    from rpt.tasks.base import render_prompt, render_text_prompt
    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, "r1")
    tok = load_tokenizer(tmp_path)
    context = tok.encode(" 12 - 5 + 30 =")
    template = "Predict the next token.\n{context}"
    plain = render_prompt(tok, template, context)
    chat = render_prompt(tok, template, context, chat_template=True)
    assert chat != plain
    start = chat.index(context[0])
    assert chat[start:start + len(context)] == context  # the context's own ids, not re-tokenised
    assert chat[0] == tok.bos_id and chat[-3:] == tok.encode("<｜Assistant｜><think>\n")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        [{"role": "user", "content": "Predict the next token.\n 12 - 5 + 30 ="}], add_generation_prompt=True,
        tokenize=True, return_dict=False)
    assert chat == list(reference)
    assert render_text_prompt(tok, "2 + 2 =", chat_template=True) == tok.encode(tok.chat_prompt("2 + 2 ="))
    assert render_text_prompt(tok, "2 + 2 =") == tok.encode("2 + 2 =")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template.*sentencepiece"):
        render_prompt(tokenizer, template, tokenizer.encode(" 12"), chat_template=True)


@pytest.mark.parametrize("style", ["qwen_instruct", "r1"])
def test_rollout_dumps_show_the_prompt_as_the_model_saw_it(tmp_path, style, tokenizer):
    """``decode_shown`` writes special tokens out (the chat frame, bos), as transformers' decode with
    ``skip_special_tokens=False`` does, where ``decode`` gives them no bytes; a long prompt is dumped as its head
    and tail, so the instruction and chat frame at the start and the context's end both show."""
    from hf_fixtures import write_tokenizer

    from rpt.tasks.base import render_prompt
    from rpt.tokenizer import load_tokenizer
    from rpt.train.rl_metrics import head_and_tail

    write_tokenizer(tmp_path, style)
    tok = load_tokenizer(tmp_path)
    ids = render_prompt(tok, "Predict the next token.\n{context}", tok.encode(" 12 - 5 + 30 ="), chat_template=True)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path).decode(ids, skip_special_tokens=False)
    assert tok.decode_shown(ids) == theirs and tok.decode(ids) != theirs
    sp = tokenizer.encode("1 + 2 = 3")
    assert tokenizer.decode_shown([tokenizer.bos_id, *sp]) == tokenizer.sp.id_to_piece(tokenizer.bos_id) + \
        tokenizer.decode(sp)
    long = "A" * 500 + "middle" + "Z" * 500
    shown = head_and_tail(long, 600)
    assert shown.startswith("A" * 300) and shown.endswith("Z" * 300) and "[... 406 characters ...]" in shown
    assert head_and_tail("short", 600) == "short"


def test_no_chat_template_is_a_clear_error(tmp_path):
    from hf_fixtures import write_tokenizer

    from rpt.tokenizer import load_tokenizer

    write_tokenizer(tmp_path, "qwen_base", chat_template=False)
    with pytest.raises(ValueError, match="rollout.chat_template=true needs a tokenizer with a chat template"):
        load_tokenizer(tmp_path).chat_prompt("hi")
