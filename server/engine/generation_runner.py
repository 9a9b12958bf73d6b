"""A generation's life on the model: started from its prepared inputs, prefilled in chunks,
decoded step by step in the decode batch with other calls, stopped. Called from the engine
thread only (``StepExecutor``)."""

from __future__ import annotations

from collections.abc import Sequence

from maira_sae.server.engine.decode_batch import CallEvents, DecodeBatch
from maira_sae.server.engine.dynamic_decode_batch import DynamicDecodeBatch
from maira_sae.server.engine.generation import GenerationCall
from maira_sae.server.engine.out_of_memory import out_of_memory_is_retryable
from maira_sae.server.engine.preparation import PreparedGeneration
from maira_sae.server.engine.sae_entry import SaeEntry
from maira_sae.server.engine.static_decode_batch import StaticDecodeSettings
from maira_sae.server.engine.types import FinishReason, VariantFinished
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import TaskKind


class GenerationRunner:
    def __init__(
        self,
        model: Maira2ForConditionalGeneration,
        processor: Maira2Processor,
        saes: Sequence[SaeEntry],
        static_decode: StaticDecodeSettings | None,
    ) -> None:
        """``static_decode`` selects the graph-ready decode batch (``static_decode_batch``)."""
        self._model = model
        self._processor = processor
        self._eos_token_ids = frozenset({processor.eos_token_id})
        self._static_batch = (
            None
            if static_decode is None
            else static_decode.build(model, [(entry.sae, entry.layer) for entry in saes])
        )

    def new_batch(self) -> DecodeBatch:
        """An empty set of running generations, decoded together step by step."""
        if self._static_batch is not None:
            return self._static_batch.reset()
        return DynamicDecodeBatch(self._model)

    def start(self, request_id: int, prepared: PreparedGeneration) -> GenerationCall:
        """A call ready to prefill (no model work yet)."""
        request, entry, inputs = prepared.request, prepared.entry, prepared.inputs
        grounded = request.task.kind is not TaskKind.FINDINGS
        return GenerationCall(
            request_id,
            self._model,
            inputs,
            request.variants,
            request.settings,
            sae=entry.sae,
            steer_layer=entry.layer,
            eos_token_ids=self._eos_token_ids,
            decode=self._processor.decode_generated,
            grounded_image=inputs.images[0] if grounded else None,
        )

    def prefill_chunk(self, batch: DecodeBatch, call: GenerationCall, max_tokens: int) -> bool:
        """Run up to ``max_tokens`` more of the call's prompt; True once the prompt is done
        and the call's rows have joined ``batch``."""
        with out_of_memory_is_retryable():
            prefilled = call.prefill_chunk(max_tokens)
            if prefilled is not None:
                batch.join(call, prefilled)
        return prefilled is not None

    def decode(self, batch: DecodeBatch) -> list[CallEvents]:
        """One decode step for every row of ``batch``."""
        with out_of_memory_is_retryable():
            return batch.step()

    def stop(
        self, batch: DecodeBatch, call: GenerationCall, reason: FinishReason
    ) -> tuple[VariantFinished, ...]:
        """End a call now: its rows leave the batch (a call still being prefilled gets no more
        chunks); returns each variant's result."""
        call.stop(reason)
        batch.remove(call)
        return call.finished()

    def close(self) -> None:
        """Let go of what the runner put on the model (the static batch's hooks)."""
        if self._static_batch is not None:
            self._static_batch.close()
            self._static_batch = None
