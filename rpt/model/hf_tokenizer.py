"""A sentencepiece model trained here, written as the ``tokenizer.json`` and ``tokenizer_config.json`` that
``AutoTokenizer`` loads as the same tokenizer (the same ids for every text, the same text back).

Why our own: ``transformers``' sentencepiece converter follows a model's own settings only from 5.2x on, while
vLLM's builds pin ``transformers`` below 5.20, where the converter drops the BPE merges (every text would encode
character by character). The conversion is the sentencepiece model's spec read into the ``tokenizers`` library's
parts: the pieces as the vocabulary (BPE merges ranked by the merged piece's score, as sentencepiece applies
them; or Unigram scores), user-defined pieces isolated and never merged (sentencepiece emits them whole: rpt's
digit groups and think markers), and the normalizer spec (precompiled character map, extra-whitespace removal,
whitespace escaping, the dummy prefix), decoded back with byte fallback.
"""

from __future__ import annotations

import re
from pathlib import Path

NORMAL, USER_DEFINED = 1, 4  # sentencepiece's piece types
BPE, UNIGRAM = 2, 1  # sentencepiece's model types
SPACE = "\u2581"  # sentencepiece's escaped space


def _model(proto, user_defined: list[str]):
    from tokenizers import models

    spec = proto.trainer_spec
    if spec.model_type == UNIGRAM:
        return models.Unigram([(p.piece, p.score) for p in proto.pieces], spec.unk_id, spec.byte_fallback)
    if spec.model_type != BPE:
        raise ValueError(f"a sentencepiece model of type {spec.model_type} has no tokenizer.json form here "
                         f"(BPE and Unigram do)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = sorted((normal[piece], piece[:cut], piece[cut:]) for piece in normal for cut in range(1, len(piece))
                    if piece[:cut] in normal and piece[cut:] in normal)
    return models.BPE(vocab=vocab, merges=[(left, right) for _, left, right in ranked], unk_token=spec.unk_piece,
                      fuse_unk=True, byte_fallback=spec.byte_fallback, ignore_merges=bool(user_defined))


def fast_tokenizer(proto):
    """The ``tokenizers.Tokenizer`` that encodes like the sentencepiece model ``proto`` (a parsed ModelProto)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    norm, byte_fallback = proto.normalizer_spec, proto.trainer_spec.byte_fallback
    user_defined = [p.piece for p in proto.pieces if p.type == USER_DEFINED]
    tokenizer = Tokenizer(_model(proto, user_defined))
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:  # spaces only: sentencepiece leaves newlines and tabs alone
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    splits = []
    if norm.add_dummy_prefix:
        splits.append(pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False))
    if user_defined:
        longest_first = sorted(user_defined, key=len, reverse=True)
        splits.append(pre_tokenizers.Split(Regex("|".join(map(re.escape, longest_first))), behavior="isolated"))
    if splits:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splits)
    back = [decoders.Replace(SPACE, " ")] + ([decoders.ByteFallback()] if byte_fallback else [])
    if norm.add_dummy_prefix:
        back += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    elif byte_fallback:
        back.append(decoders.Fuse())
    tokenizer.decoder = decoders.Sequence(back)
    return tokenizer


def write_hf_tokenizer(sentencepiece_model: Path, out_dir: Path) -> None:
    """``tokenizer.json`` (``fast_tokenizer``) and a ``tokenizer_config.json`` naming the fast tokenizer class and
    the special pieces. Without them ``AutoTokenizer`` falls back to the architecture's tokenizer class, which reads
    ``tokenizer.model`` otherwise (a Qwen2Tokenizer dropped every space and appended an id beyond the embedding)."""
    from sentencepiece import sentencepiece_model_pb2
    from transformers import PreTrainedTokenizerFast

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(sentencepiece_model).read_bytes())
    spec = proto.trainer_spec
    specials = {role: proto.pieces[i].piece for role, i in
                (("bos_token", spec.bos_id), ("eos_token", spec.eos_id), ("unk_token", spec.unk_id),
                 ("pad_token", spec.pad_id)) if 0 <= i < len(proto.pieces)}
    PreTrainedTokenizerFast(tokenizer_object=fast_tokenizer(proto), **specials).save_pretrained(out_dir)
