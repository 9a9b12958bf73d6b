"""A Llama/Vicuna-style tokenizer with MAIRA-2's vocabulary layout, built offline for the demo.

The real tokenizer cannot be downloaded here, so the demo snapshot gets one with the same
schema: a byte-fallback BPE over SentencePiece-style "▁" pieces (``<unk>``=0, ``<s>``=1,
``</s>``=2, the 256 byte pieces ``<0x00>``..``<0xFF>``, merges learnt from a small built-in
English and radiology corpus, filler pieces up to 32000), then MAIRA-2's 207 added tokens at
their real ids. The pipeline mirrors what transformers' ``LlamaTokenizer`` builds with
``legacy: false`` (Metaspace, prepend only to the first section, no normaliser), so the file
and the class agree.

Only ``<s>``, ``</s>``, ``<unk>`` and the image placeholders are *special*: decoding with
``skip_special_tokens=True`` drops them but keeps ``<obj>``, ``<box>`` and the coordinate
tokens, which is how MAIRA-2's own processor still parses grounded output after skipping
special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

BASE_VOCAB_SIZE = 32000
NUM_COORDINATE_BINS = 100
MODEL_MAX_LENGTH = 6144  # [assumed] Vicuna's 4096 times MAIRA-2's linear RoPE factor 1.5

UNK, BOS, EOS = "<unk>", "<s>", "</s>"

# The chat template of chat_template.json, byte for byte (maira2-facts.md, "Prompt").
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}You are an expert radiology assistant tasked with interpreting a chest X-ray "
    'study.  {% for message in messages %}{% if message["role"] == "user" %}USER:  '
    '{% else %}ASSISTANT: {% endif %}{% for item in message["content"] %}'
    '{% if item["type"] == "text" %}{{ item["text"] }}'
    '{% elif item["type"] == "image" %}<image>{% endif %}{% endfor %}'
    '{% if message["role"] == "user" %}  {% else %}{{eos_token}}{% endif %}{% endfor %}'
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

_CORPUS = """\
You are an expert radiology assistant tasked with interpreting a chest X-ray study.
Given the current frontal image only. Given the current frontal image the current lateral image
and the prior frontal image. PRIOR_REPORT: INDICATION: TECHNIQUE: COMPARISON: N/A USER: ASSISTANT:
Provide a structured description of the findings in the radiology study in comparison to the prior
frontal image. Each finding should be described as a self-contained plain-text sentence. If the
finding is groundable, locate the finding in the current frontal chest X-ray image, with bounding
boxes indicating all locations where it can be seen in the current frontal image. Otherwise,
generate just the ungrounded finding without bounding boxes. Repeat the following finding as a
grounded phrase with bounding boxes indicating all locations where it can be seen in the given
chest X-ray image. Finding:
PA and lateral views of the chest. AP portable view of the chest. Single frontal view.
Dyspnea. Cough and fever. Shortness of breath. Chest pain. Evaluate for pneumonia.
History of heart failure, now with worsening edema. Status post line placement.
The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax.
The heart size is normal. The cardiac silhouette is enlarged. Mild cardiomegaly is stable.
The mediastinal and hilar contours are within normal limits. The aorta is tortuous.
There is a small left pleural effusion with adjacent atelectasis at the left lung base.
There is a moderate right pleural effusion. Bilateral pleural effusions are unchanged.
Mild pulmonary vascular congestion and interstitial edema are present.
Patchy opacity in the right lower lobe may reflect pneumonia or aspiration.
A right-sided PICC line terminates in the distal superior vena cava.
The endotracheal tube tip is 4 cm above the carina. A nasogastric tube courses below the
diaphragm. A left-sided pacemaker with leads in the right atrium and right ventricle.
Sternotomy wires and mediastinal clips are noted. No acute osseous abnormality.
Degenerative changes of the thoracic spine. Healed right rib fractures.
Compared to the prior study, the effusion has decreased in size. No significant interval change.
Left basilar opacity likely reflects atelectasis, although infection cannot be excluded.
Lungs are hyperinflated, consistent with chronic obstructive pulmonary disease.
A nodular opacity in the right upper lobe measures 12 mm. Recommend CT for further evaluation.
Low lung volumes with bibasilar atelectasis. Elevation of the right hemidiaphragm.
The patient is rotated. The costophrenic angles are sharp. There is no free air under the
diaphragm. Calcified granuloma. Hiatal hernia. Subcutaneous emphysema. Apical pleural thickening.
The quick brown fox jumps over the lazy dog. This is a test of the tokenizer, which should
round trip ordinary English text: numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024, punctuation (.,;:!?),
quotes "like this" and 'this', and words such as and, or, but, with, without, for, from, to, in,
on, at, by, of, the, a, an, is, are, was, were, be, been, has, have, had, not, no, there, here.
ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 ! " # $ % & ' ( ) * + , - . / :
; < = > ? @ [ \\ ] ^ _ ` { | } ~
"""


FILLER_PREFIX = "<unused"


def write_demo_tokenizer(folder: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    added_tokens.json into ``folder``; the same bytes on every call."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    (folder / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    added = _added_tokens()
    _write_json(folder / "tokenizer_config.json", _tokenizer_config(added))
    _write_json(folder / "special_tokens_map.json", _special_tokens_map())
    _write_json(
        folder / "added_tokens.json",
        {token.content: BASE_VOCAB_SIZE + i for i, token in enumerate(added)},
    )


def write_chat_template(folder: Path) -> None:
    """Write chat_template.json holding MAIRA-2's chat template (the processor's copy of the
    one in tokenizer_config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})


def _added_tokens() -> list[AddedToken]:
    """MAIRA-2's tokens after the 32000 Llama pieces, in id order from 32000."""
    plain = [
        "<obj>",
        "</obj>",
        *(f"<x{i}>" for i in range(NUM_COORDINATE_BINS)),
        *(f"<y{i}>" for i in range(NUM_COORDINATE_BINS)),
        "<box>",
        "</box>",
    ]
    image_placeholders = ["<image>", "<prev_im>", "<lat_image>"]
    return [_added(content, special=False) for content in plain] + [
        _added(content, special=True) for content in image_placeholders
    ]


def _added(content: str, *, special: bool) -> AddedToken:
    return AddedToken(
        content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special
    )


def _build_tokenizer() -> Tokenizer:
    vocab, merges = _base_vocab_and_merges()
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 1)]
    )
    tokenizer.add_special_tokens([_added(token, special=True) for token in (UNK, BOS, EOS)])
    for token in _added_tokens():  # one at a time: each takes the next id from 32000 on
        if token.special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    return tokenizer


def filler_token_ids() -> tuple[int, ...]:
    """Ids of the filler pieces that pad the demo vocabulary to 32000 (no text maps to them)."""
    vocab, _ = _base_vocab_and_merges()
    return tuple(index for piece, index in vocab.items() if piece.startswith(FILLER_PREFIX))


def _base_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 32000 base pieces: specials, bytes, pieces learnt from the corpus, fillers."""
    pieces = [UNK, BOS, EOS, *(f"<0x{byte:02X}>" for byte in range(256))]
    learnt, merges = _learn_pieces()
    pieces += [piece for piece in learnt if piece not in pieces]
    # Fillers pad the vocabulary to Llama's size; no merge produces them, so text never maps
    # to them and only a (random demo) model can emit them.
    pieces += [f"{FILLER_PREFIX}{i}>" for i in range(BASE_VOCAB_SIZE - len(pieces))]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def _learn_pieces() -> tuple[list[str], list[tuple[str, str]]]:
    """Train a BPE on the built-in corpus; words keep a leading "▁" as in SentencePiece."""
    trainer_tokenizer = Tokenizer(BPE(unk_token=UNK))
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True
    )
    trainer = BpeTrainer(vocab_size=4000, min_frequency=1, show_progress=False)
    trainer_tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    learnt = sorted(model["vocab"], key=model["vocab"].__getitem__)
    merges = [
        tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
        for merge in model["merges"]
    ]
    return learnt, merges


def _tokenizer_config(added: list[AddedToken]) -> dict[str, object]:
    """Vicuna-7B-v1.5's settings plus MAIRA-2's added tokens; pad is ``<unk>`` (pad id 0)."""
    decoder = {
        str(i): _added_token_entry(content, special=True)
        for i, content in enumerate((UNK, BOS, EOS))
    }
    decoder |= {
        str(BASE_VOCAB_SIZE + i): _added_token_entry(token.content, special=token.special)
        for i, token in enumerate(added)
    }
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        # Where the original processor reads it from; chat_template.json holds a copy.
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": UNK,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": UNK,
    }


def _added_token_entry(content: str, *, special: bool) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _special_tokens_map() -> dict[str, object]:
    def entry(content: str) -> dict[str, object]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    return {
        "bos_token": entry(BOS),
        "eos_token": entry(EOS),
        "pad_token": entry(UNK),
        "unk_token": entry(UNK),
    }


def _write_json(path: Path, content: dict[str, object]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
