"""MAIRA-2's tokenizer and chat template, read from a snapshot exactly as the original ran them.

The original processor (transformers 4.4x) ran ``LlamaTokenizerFast`` over ``tokenizer.json``:
the normalizer, pre-tokenizer, model, decoder and added tokens as serialized, whatever the
``legacy`` flag says (that flag only matters when converting from ``tokenizer.model``). Its
one change to the file: at start it rebuilds the post-processor from ``add_bos_token``
(default true) and ``add_eos_token`` (default false) in tokenizer_config.json.

Transformers 5's ``LlamaTokenizer`` does otherwise: it rebuilds the whole pipeline from the
``legacy`` flag (ignoring the file's normalizer, pre-tokenizer and decoder), drops BOS when the
file's post-processor is null, and orders merges by id when only ``tokenizer.model`` exists.
So the snapshot is read with transformers' ``TokenizersBackend`` (the ``tokenizers`` pipeline
as serialized) and given the 4.x post-processor. Without a tokenizer.json it is refused.

The prompt is rendered with the tokenizer's chat template (tokenizer_config.json), as the
original did; ``chat_template.json`` (the processor's copy) is read when the tokenizer has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TokenizersBackend

from maira_sae.server.maira2.config import CheckpointError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.json"
# LlamaTokenizerFast's defaults in transformers 4.x, for a tokenizer_config.json without them.
DEFAULT_ADD_BOS_TOKEN = True
DEFAULT_ADD_EOS_TOKEN = False


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json as plain data ({} when the snapshot has none)."""
    return _read_json_object(folder / TOKENIZER_CONFIG_FILE, missing_ok=True)


def load_snapshot_tokenizer(folder: Path) -> TokenizersBackend:
    """The snapshot's tokenizer.json pipeline as serialized, with the post-processor that
    transformers 4.x's LlamaTokenizerFast built from ``add_bos_token`` / ``add_eos_token``."""
    if not (folder / TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"{folder}: no {TOKENIZER_FILE}. MAIRA-2's original processor ran the fast "
            f"tokenizer that file holds; rebuilding it from tokenizer.model alone does not give "
            f"the same ids, so this snapshot is refused (add the hub's {TOKENIZER_FILE})"
        )
    config = read_tokenizer_config(folder)
    try:
        # Passing both flags makes the backend rebuild its post-processor from them: the same
        # template ("<s>:0 $A:0", plus "</s>:0" with add_eos_token) 4.x wrote at start.
        return TokenizersBackend.from_pretrained(
            folder,
            local_files_only=True,
            add_bos_token=bool(config.get("add_bos_token", DEFAULT_ADD_BOS_TOKEN)),
            add_eos_token=bool(config.get("add_eos_token", DEFAULT_ADD_EOS_TOKEN)),
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{folder / TOKENIZER_FILE}: cannot load it: {e}") from e


def read_chat_template(folder: Path) -> str:
    """The chat template the original rendered prompts with: the tokenizer's, else the
    processor's chat_template.json."""
    templates = chat_templates(folder)
    template = templates.get(TOKENIZER_CONFIG_FILE, templates.get(CHAT_TEMPLATE_FILE))
    if template is None:
        raise CheckpointError(
            f"{folder}: no chat template: neither {TOKENIZER_CONFIG_FILE} nor "
            f"{CHAT_TEMPLATE_FILE} has a 'chat_template'"
        )
    return template


def chat_templates(folder: Path) -> dict[str, str]:
    """The chat templates a snapshot carries, by the file that holds each."""
    found: dict[str, str] = {}
    for name in (TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE):
        template = _read_json_object(folder / name, missing_ok=True).get("chat_template")
        if template is None:
            continue
        if not isinstance(template, str):
            raise CheckpointError(f"{folder / name}: 'chat_template' must be one string")
        found[name] = template
    return found


def _read_json_object(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    if missing_ok and not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level")
    return data
