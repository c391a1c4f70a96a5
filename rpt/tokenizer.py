"""Tokenizer interface used by every stage: token ids plus the exact UTF-8 bytes of each token.

The RPT reward compares bytes and needs each ground-truth token's byte span, so besides encode/decode the
interface exposes ``token_bytes(id)``. Two backends:
- ``Tokenizer``: a sentencepiece model trained with identity normalisation, no dummy prefix and byte fallback,
  so ``decode(encode(text)) == text`` for any text and the bytes of a token sequence are exactly the
  concatenation of its tokens' bytes;
- ``HFTokenizer``: the ``tokenizer.json`` that ships with an imported HF checkpoint (Qwen2, Llama 3: byte-level
  BPE; Llama 2 style: "▁" pieces with byte fallback), read through ``tokenizers``; token bytes come from the
  byte-level alphabet (or the piece text), so the same byte arithmetic holds.
``load_tokenizer(dir)`` picks the backend from the files present.
"""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer:
    def __init__(self, model_file: str | Path):
        model_file = Path(model_file)
        if not model_file.exists():
            raise FileNotFoundError(f"tokenizer model not found: {model_file}")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self._bytes = [self._piece_bytes(i) for i in range(self.sp.get_piece_size())]

    def _piece_bytes(self, i: int) -> bytes:
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return b""
        piece = self.sp.id_to_piece(i)
        m = _BYTE_PIECE.match(piece)
        if self.sp.is_byte(i) and m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    @classmethod
    def from_run(cls, run_dir) -> Tokenizer:
        return load_tokenizer(run_dir.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        """Decode ids to text; byte-fallback sequences that are not valid UTF-8 become U+FFFD."""
        return self.bytes_of(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def bytes_of(self, ids) -> bytes:
        return b"".join(self._bytes[int(i)] for i in ids)


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the alphabet byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class HFTokenizer(Tokenizer):
    """An HF ``tokenizer.json`` behind the same interface (ids, text, exact bytes per token)."""

    def __init__(self, tokenizer_json: str | Path):
        from tokenizers import Tokenizer as HFTok

        path = Path(tokenizer_json)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        self.tok = HFTok.from_file(str(path))
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self._special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        byte_level = "ByteLevel" in json_kind(path)
        table = _byte_level_decoder()
        self._bytes = [b""] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            if piece in self._special:
                continue
            m = _BYTE_PIECE.match(piece)
            if m:
                self._bytes[i] = bytes([int(m.group(1), 16)])
            elif byte_level and all(ch in table for ch in piece):
                self._bytes[i] = bytes(table[ch] for ch in piece)
            else:
                self._bytes[i] = piece.replace("\u2581", " ").encode("utf-8")
        self._eos = self._find(["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>"])
        self._pad = self._find(["<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>"]) or 0

    def _find(self, names):
        for n in names:
            i = self.tok.token_to_id(n)
            if i is not None:
                return i
        return None

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    @property
    def eos_id(self) -> int:
        return -1 if self._eos is None else self._eos

    @property
    def bos_id(self) -> int:
        return -1

    @property
    def pad_id(self) -> int:
        return self._pad

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids


def json_kind(path: Path) -> str:
    """The pre-tokenizer / decoder types named in a tokenizer.json (as text, for a cheap check)."""
    import json

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    return json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The run's tokenizer: sentencepiece ``tokenizer.model`` if present, else an HF ``tokenizer.json``."""
    directory = Path(directory)
    if (directory / "tokenizer.model").exists():
        return Tokenizer(directory / "tokenizer.model")
    if (directory / "tokenizer.json").exists():
        return HFTokenizer(directory / "tokenizer.json")
    raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {directory}")
