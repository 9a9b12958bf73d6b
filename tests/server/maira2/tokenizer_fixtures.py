"""Tokenizer files in the two forms transformers 4.x writes for a Llama tokenizer.

4.x's ``LlamaConverter`` builds tokenizer.json from the ``legacy`` flag: ``legacy: true`` (its
default) normalises each text segment with Prepend("▁") + Replace(" ", "▁") and has no
pre-tokenizer; ``legacy: false`` has no normaliser and a Metaspace pre-tokenizer that prepends
"▁" to the first segment only. Both start from the demo tokenizer (MAIRA-2's vocabulary layout
and added tokens); which form the real snapshot has is unknown, so the processor must honour
whichever the file holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers

from maira_sae.server.demo.tokenizer import write_demo_tokenizer


def write_4x_tokenizer(folder: Path, *, legacy: bool, post_processor: bool = True) -> Path:
    """tokenizer.json and tokenizer_config.json as 4.x writes them for ``legacy``; without
    ``post_processor`` the file's post-processor is null (BOS must still come from the
    config's add_bos_token, as in 4.x)."""
    write_demo_tokenizer(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if legacy:
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tokenizer.pre_tokenizer = None
    else:
        tokenizer.normalizer = None
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
    data = json.loads(tokenizer.to_str())
    if not post_processor:
        data["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["legacy"] = legacy
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
