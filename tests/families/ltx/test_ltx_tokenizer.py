"""T5 tokenization without transformers against transformers' T5TokenizerFast, called as LTXPipeline calls
it, for the snapshot layouts a user may have: a sentencepiece spiece.model (LTX-Video's own), a
tokenizer.json as transformers 5 saves it, an older-style tokenizer.json, and our offline tiny folder.
Token ids are integers: equality is exact."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from transformers import T5TokenizerFast

from svd_trt.families.ltx import tokenizer as tk

PROMPTS = [
    "A woman with long brown hair smiles at the camera.",
    "",
    "  leading and   repeated  spaces, trailing ",
    "tabs\tand\nnewlines\r\nhere",
    "Café naïve résumé — ｆｕｌｌｗｉｄｔｈ ① ﬁ 日本語 🎬 ZWJ 👩‍👩‍👧",
    "special tokens in text: </s> <pad> <unk> <extra_id_1>x <extra_id_0>",
    "a long prompt " * 30,  # truncated: L - 1 tokens, then </s>
    "UPPER lower 12345 !?.,;:'\"()[]{}",
]
CORPUS = """A woman with long brown hair and light skin smiles at another woman with long blonde hair.
The camera angle is a close-up, focused on the woman's face. The lighting is warm and natural.
A young girl stands calmly in the foreground, looking directly at the camera, as a house fire rages.
Flames engulf the structure, with smoke billowing into the air. Firefighters rush to the scene.
Café, naïve, résumé, ｆｕｌｌｗｉｄｔｈ text ① and ligature ﬁ. 日本語のテキスト。 Emoji 🎬 end.
"""
EXTRA_IDS = 3


def _reference(folder, prompts, length):
    ref = T5TokenizerFast.from_pretrained(folder)
    out = ref(prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True)
    return np.array(out.input_ids), np.array(out.attention_mask)


def _ours(folder, prompts, length, tmp_path):
    path = tk.write_tokenizer_json(folder, tmp_path / "runtime" / "tokenizer.json")
    return tk.encode(tk.load_tokenizer(path), prompts, length)


def _assert_same(folder, tmp_path, lengths=(12, 40)):
    for length in lengths:
        ref_ids, ref_mask = _reference(folder, PROMPTS, length)
        ids, mask = _ours(folder, PROMPTS, length, tmp_path)
        assert ids.dtype == mask.dtype == np.int64 and ids.shape == (len(PROMPTS), length)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(mask, ref_mask)


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory):
    """LTX-Video's layout: spiece.model (sentencepiece's trainer, its default nmt_nfkc normalization:
    a precompiled charsmap, as T5's has) with T5's ids (pad 0, eos 1, unk 2), tokenizer_config.json."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 3),
        model_writer=model,
        vocab_size=120,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    extras = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    config = {
        "add_prefix_space": True,
        "additional_special_tokens": extras,
        "eos_token": "</s>",
        "extra_ids": EXTRA_IDS,
        "legacy": True,
        "model_max_length": 128,
        "pad_token": "<pad>",
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    specials = {
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "additional_special_tokens": extras,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    return folder


def test_spiece_model(spiece_folder, tmp_path):
    _assert_same(spiece_folder, tmp_path)


def test_tokenizer_json_as_transformers_saves_it(spiece_folder, tmp_path):
    folder = tmp_path / "saved"
    T5TokenizerFast.from_pretrained(spiece_folder).save_pretrained(folder)
    assert not (folder / "spiece.model").exists()
    _assert_same(folder, tmp_path)


def test_older_tokenizer_json(spiece_folder, tmp_path):
    """transformers 4's converter wrote more normalizers and a bare Metaspace pre-tokenizer;
    transformers 5 (the reference) keeps only the vocabulary and the charsmap, as we do."""
    folder = tmp_path / "v4"
    T5TokenizerFast.from_pretrained(spiece_folder).save_pretrained(folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            data["normalizer"],
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ],
    }
    data["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "▁",
        "prepend_scheme": "always",
        "split": True,
    }
    (folder / "tokenizer.json").write_text(json.dumps(data))
    _assert_same(folder, tmp_path)


def test_tiny_folder_is_what_transformers_builds_offline(tmp_path):
    """write_tokenizer_files: the folder loads in transformers, and equals T5TokenizerFast(vocab, extra_ids=0)."""
    folder = tk.write_tokenizer_files(tmp_path / "tiny")
    assert {p.name for p in folder.iterdir()} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    _assert_same(folder, tmp_path)
    built = T5TokenizerFast(vocab=tk._tiny_vocab(), extra_ids=0)
    loaded = T5TokenizerFast.from_pretrained(folder)
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    for length in (8, 30):
        a = built(PROMPTS, padding="max_length", max_length=length, truncation=True)
        b = loaded(PROMPTS, padding="max_length", max_length=length, truncation=True)
        assert a.input_ids == b.input_ids and a.attention_mask == b.attention_mask


def test_custom_vocab(tmp_path):
    vocab = [
        ("<pad>", 0.0),
        ("</s>", 0.0),
        ("<unk>", 0.0),
        ("▁", -2.0),
        ("a", -3.0),
        ("b", -3.5),
        ("▁ab", -4.0),
    ]
    folder = tk.write_tokenizer_files(tmp_path / "custom", vocab)
    ids, mask = _ours(folder, ["ab a b c", ""], 8, tmp_path)
    np.testing.assert_array_equal(ids, [[6, 3, 4, 3, 5, 3, 2, 1], [1, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1] * 8, [1] + [0] * 7])


def test_sentencepiece_reader_is_protobufs(spiece_folder):
    """Our hand-written ModelProto reader against sentencepiece's generated protobuf code."""
    pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    data = (spiece_folder / "spiece.model").read_bytes()
    proto = pb2.ModelProto()
    proto.ParseFromString(data)
    pieces, model_type, charsmap = tk.read_sentencepiece(data)
    assert pieces == [(p.piece, p.score, p.type) for p in proto.pieces]
    assert model_type == proto.trainer_spec.model_type == tk.UNIGRAM
    assert charsmap == proto.normalizer_spec.precompiled_charsmap and len(charsmap) > 1000


def test_refusals_are_one_line(tmp_path, spiece_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(tk.TokenizerError, match="neither tokenizer.json nor spiece.model"):
        tk.write_tokenizer_json(empty, tmp_path / "t.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "spiece.model").write_bytes((spiece_folder / "spiece.model").read_bytes()[:1000])
    with pytest.raises(tk.TokenizerError, match="spiece.model: not a sentencepiece model"):
        tk.write_tokenizer_json(broken, tmp_path / "t.json")
    with pytest.raises(tk.TokenizerError, match="no such file"):
        tk.load_tokenizer(tmp_path / "missing.json")
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(tk.TokenizerError, match="a BPE model, not T5's Unigram"):
        tk.write_tokenizer_json(bpe, tmp_path / "t.json")


def test_write_keeps_nothing_half_written(tmp_path, spiece_folder):
    out = tmp_path / "engine" / "tokenizer.json"
    tk.write_tokenizer_json(spiece_folder, out)
    before = out.read_bytes()
    shutil.copy(out, tmp_path / "copy.json")
    with pytest.raises(tk.TokenizerError):
        tk.write_tokenizer_json(tmp_path / "nowhere", out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["tokenizer.json"]
