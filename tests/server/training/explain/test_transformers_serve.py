"""The LLM path end to end against a real OpenAI-compatible server process: ``transformers
serve`` on a tiny random Llama written here (the demo tokenizer, a plain chat template), on
127.0.0.1, offline. Its replies are noise, so every feature it is asked about ends failed with
the reason and the reply's own text, and the run completes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from maira_sae.server.cli import main
from maira_sae.server.training.explain.progress import ProgressFile, Status

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: "
    "{% endif %}"
)


def write_tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from maira_sae.server.demo.tokenizer import BASE_VOCAB_SIZE, write_demo_tokenizer

    write_demo_tokenizer(folder)
    settings = folder / "tokenizer_config.json"
    config = json.loads(settings.read_text())
    settings.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    vocabulary = BASE_VOCAB_SIZE + 256  # room for the added tokens
    model_config = LlamaConfig(
        vocab_size=vocabulary,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(model_config).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_tiny_llama(tmp_path_factory):
    model = write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    port = free_port()
    serve = Path(sys.executable).with_name("transformers")
    command = [str(serve), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
    log = (model / "serve.log").open("w")  # a file: a full pipe would stall the server
    process = subprocess.Popen(
        [*command, "--device", "cpu", "--log-level", "warning"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (model / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "transformers serve never became healthy"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", str(model)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def test_explain_with_the_llm_completes_against_transformers_serve(
    served_tiny_llama, world, tmp_path, capsys
):
    url, model_name = served_tiny_llama
    model, sae, studies = world
    out = tmp_path / "llm.csv"
    argv = [
        "explain",
        *("--model", str(model), "--sae", str(sae), "--studies", str(studies)),
        *("--out", str(out), "--device", "cpu", "--features", "3:6"),
        "--llm-explanation-tokens=48",  # noise either way; a short one comes sooner
        *("--explainer", "llm", "--judge", "llm", "--concurrency", "4"),
        *("--llm-base-url", url, "--llm-model", model_name, "--llm-timeout", "120"),
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == 3 and summary["explained"] + summary["failed"] == 3
    assert summary["model"] == model_name
    assert summary["usage"]["requests"] >= 2 * summary["failed"]
    assert summary["usage"]["prompt_tokens"] > 0  # the server's own counts, summed

    outcomes = ProgressFile(tmp_path / "llm.progress.jsonl").finished()
    assert sorted(outcomes) == [3, 4, 5]
    for outcome in outcomes.values():
        if outcome.status is Status.FAILED:  # noise: asked twice, then kept as it came
            assert outcome.reason.startswith("unparseable reply"), outcome.reason
            assert outcome.raw_text and outcome.usage.requests >= 2
        else:
            assert outcome.record.explainer == "llm"
            assert outcome.record.explainer_model == model_name
    assert out.read_text().startswith("feature,explanation,score")
