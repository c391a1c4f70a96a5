"""Tokenizer interface used by every stage: token ids plus the exact UTF-8 bytes of each token.

The RPT reward compares bytes and needs each ground-truth token's byte span, so besides encode/decode the
interface exposes ``token_bytes(id)``. The backing model is a sentencepiece model trained with identity
normalisation, no dummy prefix and byte fallback, so ``decode(encode(text)) == text`` for any text and the
bytes of a token sequence are exactly the concatenation of its tokens' bytes.
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
    def from_run(cls, run_dir) -> "Tokenizer":
        return cls(Path(run_dir.tokenizer) / "tokenizer.model")

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
