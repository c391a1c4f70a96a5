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

An imported tokenizer's special tokens come from the files that ship with it, as transformers reads them:
``tokenizer_config.json`` (bos/eos/pad tokens), then ``generation_config.json``, then ``config.json`` (ids). Its chat
template (inline in ``tokenizer_config.json`` or ``chat_template.jinja``) renders with jinja2 under the settings
transformers' ``apply_chat_template`` uses (sandboxed, ``trim_blocks``, ``lstrip_blocks``). A model's embedding is
often padded past the tokenizer (Qwen: 151,936 rows, 151,665 tokens): an id without a token decodes to no bytes.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer:
    def __init__(self, model_file: str | Path):
        model_file = Path(model_file)
        if not model_file.exists():
            raise FileNotFoundError(f"tokenizer model not found: {model_file}")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.source = model_file
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

    def decode_shown(self, ids) -> str:
        """Decode ids as the model saw them: special tokens (a chat template's turn markers, bos) written out as
        their text, where ``decode`` gives them no bytes. For rollout dumps and reports, never for rewards."""
        out, run = [], []
        for i in ids:
            special = self.special_text(int(i))
            if special is None:
                run.append(int(i))
                continue
            out += [self.decode(run), special]
            run = []
        return "".join(out) + self.decode(run)

    def special_text(self, token_id: int) -> str | None:
        """A special token's text (None for an ordinary token)."""
        if 0 <= token_id < self.vocab_size and (self.sp.is_control(token_id) or self.sp.is_unknown(token_id)):
            return self.sp.id_to_piece(token_id)
        return None

    def token_bytes(self, token_id: int) -> bytes:
        """The token's exact bytes; an id the tokenizer does not define (a padded embedding row) has none."""
        token_id = int(token_id)
        if 0 <= token_id < len(self._bytes):
            return self._bytes[token_id]
        if not getattr(self, "_warned_unknown_id", False):
            self._warned_unknown_id = True
            log.warning("token id %d is outside the tokenizer's %d ids (a padded embedding row?): decoded as empty "
                        "text; logged once", token_id, len(self._bytes))
        return b""

    def bytes_of(self, ids) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    @property
    def chat_template(self) -> str | None:
        """The jinja chat template shipped with the tokenizer (None: a sentencepiece tokenizer has none)."""
        return None

    def chat_prompt(self, user_text: str) -> str:
        """``user_text`` as the user turn of the tokenizer's chat template, with the generation prompt after it."""
        if self.chat_template is None:
            raise ValueError(f"rollout.chat_template=true needs a tokenizer with a chat template, but "
                             f"{self.source} has none (the sentencepiece tokenizer prep trains never has one; an "
                             f"imported HF tokenizer carries it in tokenizer_config.json or chat_template.jinja)")
        return render_chat_template(self.chat_template, [{"role": "user", "content": user_text}],
                                    self.special_tokens())

    def special_tokens(self) -> dict[str, str]:
        """bos/eos/pad token text by role (what a chat template calls ``bos_token``, ...)."""
        return {}


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
        self._special_ids = {i: t.content for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        self._special = set(self._special_ids.values())
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
        self.source = path
        files = _sibling_configs(path.parent)
        self._chat_template = _chat_template(path.parent, files["tokenizer_config"])
        self._ids = {role: self._special_id(role, files) for role in ("bos", "eos", "pad")}
        if self._ids["eos"] is None:
            self._ids["eos"] = self._find(["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>"])
            log.warning("%s names no eos token in tokenizer_config.json, generation_config.json or config.json; "
                        "guessed %s", path.parent, self._ids["eos"])
        if self._ids["pad"] is None:
            self._ids["pad"] = self._ids["eos"] if self._ids["eos"] is not None else 0
        log.info("tokenizer %s: %d ids, bos %s, eos %s, pad %s, chat template: %s", path, len(self._bytes),
                 self._ids["bos"], self._ids["eos"], self._ids["pad"], self._chat_template is not None)

    def _special_id(self, role: str, files: dict[str, dict]) -> int | None:
        """``role``'s id as transformers resolves it: the token named in tokenizer_config.json, else the id in
        generation_config.json, else in config.json (the first of a list: the one the model was trained to emit)."""
        token = files["tokenizer_config"].get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token:
            token_id = self.tok.token_to_id(token)
            if token_id is None:
                raise ValueError(f"tokenizer_config.json names {role}_token {token!r}, which {self.source} does not "
                                 f"contain")
            return token_id
        for name in ("generation_config", "config"):
            value = files[name].get(f"{role}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return None

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
        return -1 if self._ids["eos"] is None else self._ids["eos"]

    @property
    def bos_id(self) -> int:
        return -1 if self._ids["bos"] is None else self._ids["bos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def special_tokens(self) -> dict[str, str]:
        out = {}
        for role, token_id in self._ids.items():
            token = None if token_id is None else self.tok.id_to_token(token_id)
            if token is not None:
                out[f"{role}_token"] = token
        return out

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def special_text(self, token_id: int) -> str | None:
        return self._special_ids.get(token_id)


def _sibling_configs(directory: Path) -> dict[str, dict]:
    """tokenizer_config.json, generation_config.json and config.json next to a tokenizer.json ({} when absent)."""
    out = {}
    for name in ("tokenizer_config", "generation_config", "config"):
        f = directory / f"{name}.json"
        out[name] = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    return out


def _chat_template(directory: Path, tokenizer_config: dict) -> str | None:
    """The default chat template: ``chat_template.jinja`` (newer transformers) or tokenizer_config.json's
    ``chat_template`` (a string, or a list of named templates of which ``default`` is the one used)."""
    if (directory / "chat_template.jinja").exists():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}.get("default")
    return template or None


def render_chat_template(template: str, messages: list[dict], special_tokens: dict[str, str]) -> str:
    """Render ``messages`` with the generation prompt, in the jinja environment transformers renders chat
    templates in (sandboxed; trim_blocks, lstrip_blocks; ``raise_exception``, ``tojson``, ``strftime_now``)."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special_tokens)


def json_kind(path: Path) -> str:
    """The pre-tokenizer / decoder types named in a tokenizer.json (as text, for a cheap check)."""
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
