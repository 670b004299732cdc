"""T5 tokenization without torch or transformers: the `tokenizers` library on a tokenizer.json we write.

The reference is what LTXPipeline runs: transformers' T5TokenizerFast (transformers 5), called with
padding="max_length", truncation=True, add_special_tokens=True. Whatever the snapshot ships
(tokenizer.json, or a sentencepiece spiece.model), transformers 5 keeps only its vocabulary (Unigram
pieces and scores), its precompiled normalization charsmap and its special tokens, and rebuilds the rest
(models/t5/tokenization_t5.py): normalizer Precompiled(charsmap); pre-tokenizer WhitespaceSplit then
Metaspace("▁", prepend "always", split); Unigram with unk id 2, no byte fallback; post-processor
"$A </s>"; special tokens (pad, eos, unk, sentinel <extra_id_i>, the sentencepiece control pieces)
matched whole in the raw text. `write_tokenizer_json` does the same, so a deployment needs neither
transformers nor sentencepiece; a spiece.model is read with the small protobuf reader below.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from svd_trt.errors import UserError

log = logging.getLogger(__name__)

UNK_ID = 2  # transformers' T5Tokenizer hard-codes it
REPLACEMENT = "▁"
CONTROL, UNIGRAM = 3, 1  # sentencepiece's SentencePiece.Type.CONTROL and TrainerSpec.ModelType.UNIGRAM
DEFAULT_SPECIALS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


TOKENIZER_FILE = "tokenizer.json"  # the one file an LTX engine directory holds for the runtime


class TokenizerError(UserError, ValueError):
    """A tokenizer folder this runtime cannot use (missing files, not a Unigram T5 tokenizer)."""


# ---------------------------------------------------------------- encoding (the runtime)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.json written by write_tokenizer_json / write_tokenizer_files."""
    if not Path(path).is_file():
        raise TokenizerError(f"{path}: no such file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises plain Exceptions for bad JSON
        raise TokenizerError(
            f"{path}: not a tokenizer.json ({str(e).splitlines()[0] if str(e) else e})"
        ) from None


def encode(
    tokenizer: Tokenizer, prompts: str | Sequence[str], max_sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask, int64 [B, L]: T5TokenizerFast(prompts, padding="max_length",
    max_length=L, truncation=True, add_special_tokens=True), as LTXPipeline._get_t5_prompt_embeds.

    Each prompt is cut to L - 1 tokens, then </s>, then <pad> up to L (mask 0 there). Sets the
    tokenizer's truncation and padding to L (a tokenizers.Tokenizer carries them).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    pad_token = (tokenizer.padding or {}).get("pad_token", DEFAULT_SPECIALS["pad_token"])
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=max_sequence_length, stride=0, strategy="longest_first")
    tokenizer.enable_padding(length=max_sequence_length, pad_id=pad_id, pad_token=pad_token)
    encodings = tokenizer.encode_batch(prompts, add_special_tokens=True)
    for prompt, enc in zip(prompts, encodings):
        if enc.overflowing:
            log.warning(
                "prompt truncated to max_sequence_length=%d tokens: %.60r", max_sequence_length, prompt
            )
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(prompts), max_sequence_length)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(ids.shape)
    return ids, mask


# ---------------------------------------------------------------- building tokenizer.json (export side)


def build_tokenizer(
    vocab: Sequence[tuple[str, float]],
    charsmap: bytes | None = None,
    special_tokens: Sequence[AddedToken] = (),
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
) -> Tokenizer:
    """transformers 5's T5Tokenizer pipeline around a Unigram vocabulary (see the module docstring)."""
    tok = Tokenizer(Unigram([(p, float(s)) for p, s in vocab], unk_id=UNK_ID, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=REPLACEMENT, prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=REPLACEMENT, prepend_scheme="always", split=True)
    tok.add_special_tokens(list(special_tokens))
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise TokenizerError(f"the eos token {eos_token!r} is not in the vocabulary")
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", eos_token],
        pair=["$A", eos_token, "$B", eos_token],
        special_tokens=[(eos_token, eos_id)],
    )
    tok.enable_padding(pad_id=tok.token_to_id(pad_token) or 0, pad_token=pad_token)  # encode() reads these
    return tok


def _special(content: str, flags: dict | None = None) -> AddedToken:
    """transformers' AddedToken for a special token: matched whole, not normalized, unless flags say otherwise."""
    f = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, **(flags or {})}
    return AddedToken(
        content,
        single_word=f["single_word"],
        lstrip=f["lstrip"],
        rstrip=f["rstrip"],
        normalized=f["normalized"],
        special=True,
    )


def _token_name(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: not readable JSON ({type(e).__name__})") from None


def write_tokenizer_json(folder: str | Path, out_path: str | Path) -> Path:
    """The runtime's tokenizer.json from a snapshot's tokenizer folder (tokenizer.json or spiece.model,
    with tokenizer_config.json / special_tokens_map.json when present); written under a temporary name."""
    folder = Path(folder)
    config = (
        _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    )
    specials_map = (
        _read_json(folder / "special_tokens_map.json")
        if (folder / "special_tokens_map.json").is_file()
        else {}
    )
    if (folder / "tokenizer.json").is_file():
        vocab, charsmap, added = _from_tokenizer_json(folder / "tokenizer.json")
        extra_ids = 0  # a tokenizer.json's vocabulary already holds its sentinels
    elif (folder / "spiece.model").is_file():
        vocab, charsmap, added = _from_spiece(folder / "spiece.model")
        extra_ids = int(config.get("extra_ids", 100))
        vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]  # T5Converter's order
    else:
        raise TokenizerError(f"{folder}: neither tokenizer.json nor spiece.model")
    names = {k: _token_name(config.get(k, specials_map.get(k))) or v for k, v in DEFAULT_SPECIALS.items()}
    specials = list(added)
    for entry in (config.get("added_tokens_decoder") or {}).values():
        specials.append(
            _special(entry["content"], {k: entry[k] for k in entry if k != "content" and k != "special"})
        )
    specials += [_special(names[k]) for k in DEFAULT_SPECIALS]
    extras = [
        _token_name(t)
        for key in ("additional_special_tokens", "extra_special_tokens")
        for t in (config.get(key) or specials_map.get(key) or [])
    ]
    if not any("<extra_id_" in str(t) for t in extras):  # T5Tokenizer adds its sentinels then
        extras += [f"<extra_id_{i}>" for i in range(int(config.get("extra_ids", 100)))]
    specials += [_special(t) for t in extras if t]
    tok = build_tokenizer(vocab, charsmap, specials, names["eos_token"], names["pad_token"])
    return _save_atomically(tok, Path(out_path))


def _from_tokenizer_json(path: Path) -> tuple[list[tuple[str, float]], bytes | None, list[AddedToken]]:
    import base64

    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "Unigram":
        raise TokenizerError(f"{path}: a {model.get('type')} model, not T5's Unigram")
    vocab = [(p, float(s)) for p, s in model["vocab"]]
    norm = data.get("normalizer") or {}
    parts = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    charsmap = next(
        (base64.b64decode(n["precompiled_charsmap"]) for n in parts if n.get("type") == "Precompiled"), None
    )
    added = [
        _special(t["content"], {k: t[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in t})
        for t in data.get("added_tokens") or []
        if t.get("special", True)
    ]
    return vocab, charsmap, added


def _from_spiece(path: Path) -> tuple[list[tuple[str, float]], bytes | None, list[AddedToken]]:
    pieces, model_type, charsmap = read_sentencepiece(path.read_bytes())
    if model_type != UNIGRAM:
        raise TokenizerError(f"{path}: sentencepiece model type {model_type}, not T5's unigram (1)")
    vocab = [(p, s) for p, s, _ in pieces]
    control = [_special(p) for p, _, t in pieces if t == CONTROL]  # transformers' SentencePieceExtractor
    return vocab, charsmap or None, control


def _save_atomically(tok: Tokenizer, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# ---------------------------------------------------------------- sentencepiece's ModelProto, read by hand


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise TokenizerError(f"spiece.model: unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise IndexError("field past the end of its message")
        yield number, wire, value


def read_sentencepiece(data: bytes) -> tuple[list[tuple[str, float, int]], int, bytes]:
    """From sentencepiece_model.proto's ModelProto: pieces [(piece, score, type)] (field 1: piece 1,
    score 2, type 3 = NORMAL 1 by default), trainer_spec.model_type (2.3, UNIGRAM 1 by default) and
    normalizer_spec.precompiled_charsmap (3.2, empty when absent)."""
    pieces, model_type, charsmap = [], UNIGRAM, b""
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                piece, score, kind = "", 0.0, 1
                for n, w, v in _fields(value):
                    if n == 1 and w == 2:
                        piece = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3 and w == 0:
                        kind = v
                pieces.append((piece, score, kind))
            elif number == 2 and wire == 2:
                model_type = next((v for n, w, v in _fields(value) if n == 3 and w == 0), UNIGRAM)
            elif number == 3 and wire == 2:
                charsmap = next((v for n, w, v in _fields(value) if n == 2 and w == 2), b"")
    except (IndexError, UnicodeDecodeError):
        raise TokenizerError("spiece.model: not a sentencepiece model (truncated or corrupt)") from None
    if not pieces:
        raise TokenizerError("spiece.model: no pieces (not a sentencepiece model)")
    return pieces, model_type, charsmap


# ---------------------------------------------------------------- a tiny tokenizer folder for tests


def _tiny_vocab() -> list[tuple[str, float]]:
    """pad 0, eos 1, unk 2, "▁", then letters, digits and a few pieces, scores decreasing."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [REPLACEMENT, *"etaoinshrdlucmfwypvbgkjqxz", *"0123456789", *".,'-!?"]
    pieces += [REPLACEMENT + w for w in ("a", "the", "of", "and", "in", "video", "cat", "dog", "on")]
    return specials + [(p, -1.0 - 0.1 * i) for i, p in enumerate(pieces)]


def write_tokenizer_files(folder: str | Path, vocab: Sequence[tuple[str, float]] | None = None) -> Path:
    """A T5 tokenizer folder in the Hugging Face layout, made offline: tokenizer.json,
    tokenizer_config.json, special_tokens_map.json; what T5TokenizerFast(vocab=..., extra_ids=0)
    saves. vocab: [(piece, score)] with <pad>, </s>, <unk> first (default: a tiny English one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(vocab) if vocab is not None else _tiny_vocab()
    specials = [_special(v) for v in DEFAULT_SPECIALS.values()]
    _save_atomically(build_tokenizer(vocab, None, specials), folder / "tokenizer.json")
    config = {
        **DEFAULT_SPECIALS,
        "extra_ids": 0,
        "additional_special_tokens": [],
        "model_max_length": 128,
        "tokenizer_class": "T5Tokenizer",
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", DEFAULT_SPECIALS)):
        _write_text(folder / name, json.dumps(content, indent=2) + "\n")
    return folder


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
