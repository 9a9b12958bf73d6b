"""What a new user of the SDK meets first, against the real demo server: the target from the
environment, variant names on results, empty sections, the DICOM settings GetInfo reports, the
default SAE, and DICOM files the server refuses or takes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maira_sae.client import (
    Client,
    DicomOptions,
    GenerationSettings,
    InvalidRequestError,
    Study,
    StudyImage,
    TokenFilter,
    TokenKind,
    Variant,
)


def test_client_takes_its_target_from_the_environment(demo_server, monkeypatch):
    monkeypatch.setenv("MAIRA_SAE_TARGET", demo_server.target)
    with Client() as client:
        assert client.health() == "SERVING"
    monkeypatch.delenv("MAIRA_SAE_TARGET")
    with pytest.raises(ValueError, match="set MAIRA_SAE_TARGET"):
        Client()


def test_variant_results_carry_the_variants_names(client, study):
    variants = [Variant(name="baseline"), Variant.of("more effusion", "3:add:60"), Variant()]
    results = client.generate_texts(study, variants, settings=GenerationSettings(max_new_tokens=2))
    assert [r.name for r in results] == ["baseline", "more effusion", ""]
    assert client.generate_texts(study, settings=GenerationSettings(max_new_tokens=1))[0].name == ""


def prompt_text(client, study: Study) -> list[str]:
    only_text = TokenFilter(kinds=frozenset({TokenKind.PROMPT_TEXT}))
    return [t.token.text for t in client.encode(study, token_filter=only_text).tokens]


def test_an_empty_section_reads_like_a_missing_one(client, study):
    """As the Study docstring says: None and "" both read "N/A"."""
    empty = replace(study, indication="", technique="", comparison="")
    missing = replace(study, indication=None, technique=None, comparison=None)
    assert prompt_text(client, empty) == prompt_text(client, missing)
    assert "N/A" in "".join(prompt_text(client, missing))
    assert prompt_text(client, replace(study, indication="Cough.")) != prompt_text(client, missing)


def test_info_says_how_dicom_is_decoded(client):
    dicom = client.info().dicom
    assert dicom.modalities == ("CR", "DR", "DX")
    assert dicom.modality_lut and dicom.voi_lut and dicom.monochrome1_inverted
    assert "VOI LUT or window" in dicom.description and "min-max" in dicom.description
    assert dicom.options() == DicomOptions()


def test_feature_numbers_are_checked_before_sending(client):
    with pytest.raises(ValueError, match="feature must be >= 0"):
        client.feature(-1)


def test_the_server_refuses_a_ct_and_takes_a_real_cr(client, study):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115
    with pytest.raises(InvalidRequestError, match=r"modality 'CT' \(computed tomography\)"):
        client.encode(Study.of(ct))  # bytes are not decoded here: the server judges them
    assert pydicom.dcmread(get_testdata_file("RG3_UNCI.dcm")).Modality == "CR"
    cr = StudyImage.from_file(get_testdata_file("RG3_UNCI.dcm"))
    result = client.encode(Study.of(cr), token_filter=TokenFilter(image_indices=frozenset({0})))
    assert sum(t.token.kind is TokenKind.IMAGE_PATCH for t in result.tokens) == 37 * 37


@pytest.mark.slow  # materialises the world demo and starts a server
def test_serve_demo_keeps_its_sae_beside_those_named_on_the_command_line(tmp_path):
    """``serve --demo`` configures the demo's SAE and GetInfo names it as the default; an SAE
    added with ``--sae ID=PATH,interpretations=FILE`` is served beside it, with its labels."""
    from maira_sae.server.cli import _parser, with_demo
    from maira_sae.server.demo.layout import SAE_FOLDER
    from maira_sae.server.service.config_sources import config_from_sources
    from tests.support.servers import running_server

    demo = tmp_path / "demo"
    serve = ["serve", "--demo", "--model-demo-dir", str(demo), "--serving-host", "127.0.0.1"]
    serve += [f"--serving-{port}-port=0" for port in ("grpc", "metrics", "health")]
    alone = with_demo(config_from_sources(_parser().parse_args(serve), {}))
    assert [spec.id for spec in alone.saes] == ["demo-ef4-layer15"]
    labels = tmp_path / "mine.csv"
    labels.write_text("feature,explanation,score\n4,my relabelled feature,0.9\n")
    mine = f"mine={demo / SAE_FOLDER},interpretations={labels}"
    served = with_demo(config_from_sources(_parser().parse_args([*serve, "--sae", mine]), {}))
    with running_server(served) as server, Client(server.target) as client:
        info = client.info()
        assert info.model.demo
        assert [sae.id for sae in info.saes] == ["demo-ef4-layer15", "mine"]
        assert info.default_sae_id == "demo-ef4-layer15"
        assert client.feature(4, sae_id="mine").label == "my relabelled feature"
        assert client.feature(4).label not in (None, "my relabelled feature")


def test_a_server_can_be_set_to_take_any_modality_unwindowed(demo_checkpoint):
    from pydicom.data import get_testdata_file

    from maira_sae.server.service.config import DicomConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint, dicom=DicomConfig(modalities="*", apply_voi=False))
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115
    with running_server(config) as server, Client(server.target) as client:
        dicom = client.info().dicom
        assert dicom.modalities == () and not dicom.voi_lut
        assert dicom.options() == DicomOptions(modalities=None, apply_voi=False)
        assert client.encode(Study.of(ct)).total_tokens > 37 * 37
