"""Train the sentencepiece tokenizer on the prepared corpus.

Settings chosen so the tokenizer is lossless (the RPT reward compares exact bytes): identity normalisation,
no dummy prefix, whitespace kept as is, byte fallback for anything outside the vocabulary, and the think markers
as atomic symbols. Numbers are cut left to right into groups of up to ``digit_group`` digits (sentencepiece splits
every digit, and every digit string of 2..``digit_group`` digits is a user-defined symbol, which sentencepiece
matches longest first): 1 is one token per digit; 3 is Llama 3's grouping. Where a corpus's numbers fit one group,
a next-token position never falls inside a number, so a boxed prediction of the whole number is a prediction of
the next token (with single digits, the token after ``= 1`` of ``= 19`` is ``9``, and boxing ``19`` scores 0).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from rpt.rundir import atomic_path

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def digit_groups(digit_group: int) -> list[str]:
    """Every digit string of 2..``digit_group`` digits ("00" to "99", then "000" ...): the number pieces."""
    if not 1 <= digit_group <= 3:
        raise ValueError(f"data.digit_group must be 1, 2 or 3 (digits per number token), got {digit_group}")
    return [f"{n:0{width}d}" for width in range(2, digit_group + 1) for n in range(10 ** width)]


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int, model_type: str,
                    digit_group: int = 1) -> Path:
    """Train on ``texts`` and write ``out_dir/tokenizer.model`` atomically; returns its path."""
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"data.tokenizer_type must be bpe or unigram, got {model_type!r}")
    numbers = digit_groups(digit_group)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "tokenizer.model"
    with atomic_path(target) as tmp:
        prefix = str(tmp) + "_sp"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=True,
            max_sentence_length=1 << 20,
            user_defined_symbols=[THINK_OPEN, THINK_CLOSE, "\n", *numbers],
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            hard_vocab_limit=False,
            num_threads=2,
            minloglevel=2,
        )
        Path(prefix + ".model").replace(tmp)
        Path(prefix + ".vocab").replace(out_dir / "tokenizer.vocab")
    log.info("trained %s tokenizer, vocab %d, digit groups of %d -> %s", model_type, vocab_size, digit_group, target)
    return target
