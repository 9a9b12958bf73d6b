"""Study + task -> MAIRA-2 model inputs, with the kind of every token.

The prompt is rendered with the snapshot's chat template and tokenised the way MAIRA-2's
processor does (one string, added tokens split out), with one difference that matters for
safety: only the placeholders the *template* emits become image slots or end-of-sequence.
The template is rendered with private sentinels in their place, and the string is tokenised
with special-token matching off, so ``<image>``, ``<s>`` or ``</s>`` typed into an indication,
a prior report, a phrase or a teacher-forced response stay plain text. Non-special added tokens
(``<obj>``, ``<box>``, coordinates) still match, so a grounded response tokenises as the model
writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer
from transformers import TokenizersBackend

from maira_sae.server.errors import InvalidArgument
from maira_sae.server.maira2.config import Maira2Config
from maira_sae.server.maira2.image_preprocessing import (
    ImageGeometry,
    ImagePreprocessingSettings,
    PreprocessedImage,
    preprocess_image,
)
from maira_sae.server.maira2.prompts import ChatTemplate, ContentItem, Sections, user_content
from maira_sae.server.maira2.study import ImageRole, Study, Task
from maira_sae.server.maira2.tokenizer_files import load_snapshot_tokenizer, read_chat_template
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind

IMAGE_TOKEN = "<image>"

# NUL never occurs in the (refused) user text, so these can only come from the template.
_IMAGE_SENTINEL = "\x00image\x00"
_EOS_SENTINEL = "\x00eos\x00"


@dataclass(frozen=True)
class ModelInputs:
    """One request's model inputs. ``tokens`` has one entry per position of ``input_ids``;
    ``prompt_length`` positions come before the teacher-forced response (all of them when
    generating); ``images`` is where each image's square crop lies in the original."""

    input_ids: torch.Tensor  # int64 [T]
    pixel_values: torch.Tensor  # float32 [n_images, 3, S, S]
    tokens: tuple[TokenInfo, ...]
    images: tuple[ImageGeometry, ...]
    prompt_length: int


class Maira2Processor:
    """Builds tokens and pixels for MAIRA-2 and decodes what it generates."""

    def __init__(
        self,
        tokenizer: TokenizersBackend,
        chat_template: ChatTemplate,
        image_settings: ImagePreprocessingSettings,
        *,
        image_token_index: int,
        image_seq_length: int,
        patch_grid: tuple[int, int],
    ) -> None:
        rows, cols = patch_grid
        if rows * cols != image_seq_length:
            raise ValueError(
                f"patch grid {rows}x{cols} does not give image_seq_length {image_seq_length}"
            )
        tokenizer_image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if tokenizer_image_id != image_token_index:
            raise ValueError(
                f"the tokenizer has {IMAGE_TOKEN} at {tokenizer_image_id}, "
                f"the model config says image_token_index {image_token_index}"
            )
        self._tokenizer = tokenizer
        self._template = chat_template
        self._image_settings = image_settings
        self._image_token_index = image_token_index
        self._image_seq_length = image_seq_length
        self._patch_grid = (rows, cols)
        self._pieces = [
            piece.replace("▁", " ")
            for piece in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
        ]
        self._special_ids = frozenset(tokenizer.all_special_ids) | {
            token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
        }
        self._guarded = _guarded_tokenizer(tokenizer)
        self._image_sentinel_id = self._guarded.token_to_id(_IMAGE_SENTINEL)
        self._eos_sentinel_id = self._guarded.token_to_id(_EOS_SENTINEL)
        self._check_special_tokens_stay_text()
        self._check_template_placeholders()

    @classmethod
    def from_snapshot(
        cls,
        folder: Path,
        *,
        image_token_index: int,
        image_seq_length: int,
        patch_grid: tuple[int, int],
    ) -> Maira2Processor:
        """Load the tokenizer, the chat template and preprocessor_config.json of a snapshot."""
        return cls(
            load_snapshot_tokenizer(folder),
            ChatTemplate(read_chat_template(folder)),
            ImagePreprocessingSettings.from_file(folder / "preprocessor_config.json"),
            image_token_index=image_token_index,
            image_seq_length=image_seq_length,
            patch_grid=patch_grid,
        )

    @classmethod
    def for_model(cls, folder: Path, config: Maira2Config) -> Maira2Processor:
        """The processor of the snapshot in ``folder``, with the image token settings of the
        model's config."""
        return cls.from_snapshot(
            folder,
            image_token_index=config.image_token_index,
            image_seq_length=config.image_seq_length,
            patch_grid=config.patch_grid,
        )

    @property
    def eos_token_id(self) -> int:
        return self._tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        """Vicuna's tokenizer may have no pad token; MAIRA-2 pads with ``<unk>`` (id 0)."""
        pad = self._tokenizer.pad_token_id
        return self._tokenizer.unk_token_id if pad is None else pad

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Rows and columns of each image's patch grid (37 x 37 for the real model)."""
        return self._patch_grid

    def process(self, study: Study, task: Task, response: str | None = None) -> ModelInputs:
        """Tokens and pixels for a study; with ``response``, the assistant turn holds it
        (teacher forcing) and its tokens are marked RESPONSE.

        Raises InvalidArgument for a request MAIRA-2 has no prompt for, text with NUL
        characters, or an image that cannot be preprocessed.
        """
        sections = Sections.of(study)
        _refuse_nul(sections, task, response)
        images = study.images()
        roles = [role for role, _ in images]
        content = user_content(roles, task, sections)
        prompt, response_start = self._render_guarded(content, response)
        encoding = self._guarded.encode(prompt, add_special_tokens=True)
        tokens, prompt_length = self._token_infos(
            encoding.ids, encoding.offsets, roles, response_start
        )
        preprocessed = [self._preprocess(role, pixels) for role, pixels in images]
        return ModelInputs(
            input_ids=torch.tensor([token.token_id for token in tokens], dtype=torch.long),
            pixel_values=torch.stack([image.pixel_values for image in preprocessed]),
            tokens=tokens,
            images=tuple(image.geometry for image in preprocessed),
            prompt_length=prompt_length,
        )

    def process_text(self, text: str) -> ModelInputs:
        """Plain text for the language model alone: BOS, then the text's tokens (special-token
        strings in it stay text), no chat template and no image."""
        if "\x00" in text:
            raise InvalidArgument(
                "the text contains a NUL character", field="activation_text", reason="TEXT_HAS_NUL"
            )
        encoding = self._guarded.encode(text, add_special_tokens=True)
        tokens = tuple(
            TokenInfo(
                position,
                token_id,
                self._pieces[token_id],
                TokenKind.SPECIAL if token_id in self._special_ids else TokenKind.PROMPT_TEXT,
            )
            for position, token_id in enumerate(encoding.ids)
        )
        settings = self._image_settings
        return ModelInputs(
            input_ids=torch.tensor(encoding.ids, dtype=torch.long),
            pixel_values=torch.zeros(0, 3, settings.crop_height, settings.crop_width),
            tokens=tokens,
            images=(),
            prompt_length=len(tokens),
        )

    def decode_generated(self, token_ids: Sequence[int]) -> str:
        """The report text of generated tokens: special tokens skipped, the single leading
        space stripped (grounding tokens are not special and stay in the text)."""
        text = self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return text[1:] if text.startswith(" ") else text

    def token_text(self, token_id: int) -> str:
        """One token as text for display: its piece with "▁" as a space (byte-fallback pieces
        read ``<0xNN>``). Streamed report text comes from ``decode_generated`` instead."""
        return self._pieces[token_id]

    def _render_guarded(
        self, content: Sequence[ContentItem], response: str | None
    ) -> tuple[str, int | None]:
        """The prompt with sentinels for the template's images and eos, and where the
        response starts in it (None when generating)."""
        guarded = [
            {"type": "text", "text": _IMAGE_SENTINEL} if item["type"] == "image" else item
            for item in content
        ]
        prompt = self._template.render(guarded, response=None, eos_token=_EOS_SENTINEL)
        if response is None:
            return prompt, None
        forced = self._template.render(guarded, response=response, eos_token=_EOS_SENTINEL)
        if not forced.startswith(prompt):
            raise ValueError(
                "chat template: the teacher-forced prompt must extend the generation prompt"
            )
        return forced, len(prompt)

    def _token_infos(
        self,
        ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
        roles: Sequence[ImageRole],
        response_start: int | None,
    ) -> tuple[tuple[TokenInfo, ...], int]:
        """Every position's token, image placeholders expanded, and the prompt length: the
        first token that reaches into the response (its leading space included) starts it."""
        placeholders = ids.count(self._image_sentinel_id)
        if placeholders != len(roles):
            raise ValueError(
                f"the prompt has {placeholders} image placeholders for {len(roles)} images"
            )
        tokens: list[TokenInfo] = []
        prompt_length: int | None = None
        image_index = 0
        for token_id, (_, end) in zip(ids, offsets, strict=True):
            if token_id == self._image_sentinel_id:
                tokens += self._image_tokens(len(tokens), image_index, roles[image_index])
                image_index += 1
                continue
            in_response = response_start is not None and end > response_start
            if in_response and prompt_length is None:
                prompt_length = len(tokens)
            if token_id == self._eos_sentinel_id:
                token_id = self.eos_token_id
            if token_id in self._special_ids:
                kind = TokenKind.SPECIAL
            elif in_response:
                kind = TokenKind.RESPONSE
            else:
                kind = TokenKind.PROMPT_TEXT
            tokens.append(TokenInfo(len(tokens), token_id, self._pieces[token_id], kind))
        image_tokens = sum(token.token_id == self._image_token_index for token in tokens)
        if image_tokens != len(roles) * self._image_seq_length:
            raise ValueError(
                f"{image_tokens} image tokens for {len(roles)} images of "
                f"{self._image_seq_length} patches"
            )
        return tuple(tokens), len(tokens) if prompt_length is None else prompt_length

    def _image_tokens(self, start: int, image_index: int, role: ImageRole) -> list[TokenInfo]:
        text = self._pieces[self._image_token_index]
        return [
            TokenInfo(
                position=start + patch,
                token_id=self._image_token_index,
                text=text,
                kind=TokenKind.IMAGE_PATCH,
                image_index=image_index,
                image_role=role,
                grid_row=patch // self._patch_grid[1],
                grid_col=patch % self._patch_grid[1],
            )
            for patch in range(self._image_seq_length)
        ]

    def _preprocess(self, role: ImageRole, pixels: np.ndarray) -> PreprocessedImage:
        try:
            return preprocess_image(pixels, self._image_settings)
        except ValueError as exc:
            raise InvalidArgument(
                f"study.{role.value}: {exc}", field=f"study.{role.value}", reason="IMAGE_UNUSABLE"
            ) from exc

    def _check_special_tokens_stay_text(self) -> None:
        """Special-token strings in user text must not become special tokens or image slots."""
        probe = "".join([*self._tokenizer.all_special_tokens, IMAGE_TOKEN])
        leaked = set(self._guarded.encode(probe, add_special_tokens=False).ids) & (
            self._special_ids | {self._image_token_index}
        )
        if leaked:
            raise ValueError(
                f"tokens {sorted(leaked)} match in plain text; mark them special in the tokenizer"
            )

    def _check_template_placeholders(self) -> None:
        """The sentinels stand exactly where the template writes ``<image>`` and eos."""
        content = user_content(
            [ImageRole.FRONTAL, ImageRole.LATERAL, ImageRole.PRIOR], Task(), Sections()
        )
        eos = self._tokenizer.eos_token
        expected = self._template.render(content, response="report", eos_token=eos)
        guarded, _ = self._render_guarded(content, "report")
        if guarded.replace(_IMAGE_SENTINEL, IMAGE_TOKEN).replace(_EOS_SENTINEL, eos) != expected:
            raise ValueError(f"chat template: images must render as {IMAGE_TOKEN} items")


def _guarded_tokenizer(tokenizer: TokenizersBackend) -> Tokenizer:
    """A copy of the backend that matches the sentinels but never special-token strings.

    Each sentinel strips whitespace exactly as the token it stands for does in the snapshot's
    tokenizer.json (``<image>``, the eos token), so the text around it tokenises the same.
    """
    guarded = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    added = {token.content: token for token in guarded.get_added_tokens_decoder().values()}
    guarded.add_tokens(
        [
            _like(sentinel, added.get(stands_for))
            for sentinel, stands_for in (
                (_IMAGE_SENTINEL, IMAGE_TOKEN),
                (_EOS_SENTINEL, tokenizer.eos_token),
            )
        ]
    )
    guarded.encode_special_tokens = True
    return guarded


def _like(sentinel: str, token: AddedToken | None) -> AddedToken:
    """A plain added token for ``sentinel`` with ``token``'s whitespace handling."""
    return AddedToken(
        sentinel,
        normalized=False,
        special=False,
        lstrip=bool(token and token.lstrip),
        rstrip=bool(token and token.rstrip),
        single_word=bool(token and token.single_word),
    )


def _refuse_nul(sections: Sections, task: Task, response: str | None) -> None:
    fields = {  # by their paths in the request
        "study.indication": sections.indication,
        "study.technique": sections.technique,
        "study.comparison": sections.comparison,
        "study.prior_report": sections.prior_report,
        "task.phrase": task.phrase,
        "response": response,
    }
    for name, value in fields.items():
        if value and "\x00" in value:
            raise InvalidArgument(
                f"{name} contains a NUL character", field=name, reason="TEXT_HAS_NUL"
            )
