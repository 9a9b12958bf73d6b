"""Encode results as arrays: scipy.sparse CSR, dense numpy at a Matryoshka level, a pandas
frame of tokens; and a clear error naming the extra when scipy or pandas is missing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from maira_sae.client import MissingExtraError, TokenFilter, TokenKind
from maira_sae.client.arrays import FRAME_COLUMNS, level_width


@pytest.fixture(scope="module")
def sae(client):
    return client.info().sae()


@pytest.fixture(scope="module")
def encoded(client, study):
    return client.encode(study, response="No acute findings.")


def test_to_sparse_holds_every_activation(encoded, sae):
    matrix = encoded.to_sparse(sae)
    assert matrix.format == "csr" and matrix.dtype == np.float32
    assert matrix.shape == (len(encoded.tokens), sae.d_sae)
    assert matrix.nnz == sum(len(t.feature_ids) for t in encoded.tokens)
    for row, item in enumerate(encoded.tokens[::97]):
        dense_row = matrix[[row * 97]].toarray()[0]
        for feature, value in zip(item.feature_ids, item.values, strict=True):
            assert dense_row[feature] == np.float32(value)
    # without the SaeInfo: as wide as the highest feature that fired
    highest = max(max(t.feature_ids, default=-1) for t in encoded.tokens)
    assert encoded.to_sparse().shape[1] == highest + 1


def test_to_numpy_equals_the_sparse_matrix(encoded, sae):
    dense = encoded.to_numpy(sae)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, encoded.to_sparse(sae).toarray())


def test_a_level_keeps_the_first_groups_as_encode_at_that_level_does(client, study, encoded, sae):
    width = level_width(sae.group_sizes, 1)
    assert width == sae.group_sizes[0]
    at_level = encoded.to_numpy(sae, level=1)
    assert at_level.shape == (len(encoded.tokens), width)
    served = client.encode(study, response="No acute findings.", matryoshka_level=1)
    np.testing.assert_array_equal(at_level, served.to_numpy(sae)[:, :width])
    with pytest.raises(ValueError, match="group sizes"):
        encoded.to_numpy(level=1)
    with pytest.raises(ValueError, match="level"):
        encoded.to_numpy(sae, level=len(sae.group_sizes) + 1)


def test_to_frame_has_one_row_per_token(client, study, encoded):
    frame = encoded.to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS
    assert len(frame) == len(encoded.tokens)
    assert frame["position"].tolist() == [t.token.position for t in encoded.tokens]
    patches = frame[frame["kind"] == TokenKind.IMAGE_PATCH.value]
    assert patches["image_role"].eq("frontal").all()
    assert patches["grid_row"].max() == 36 and patches["grid_col"].max() == 36
    text = frame[frame["kind"] != TokenKind.IMAGE_PATCH.value]
    assert text["image_index"].isna().all() and text["grid_row"].isna().all()
    assert "response" in set(frame["kind"])
    assert frame["num_active"].sum() == sum(len(t.feature_ids) for t in encoded.tokens)
    # a token filter keeps only its tokens
    only_text = client.encode(study, token_filter=TokenFilter(kinds={TokenKind.PROMPT_TEXT}))
    assert set(only_text.to_frame()["kind"]) == {"prompt_text"}


def test_the_result_of_another_sae_is_refused(encoded, sae):
    from dataclasses import replace

    with pytest.raises(ValueError, match="not 'other'"):
        encoded.to_sparse(replace(sae, id="other"))


@pytest.mark.parametrize(("method", "module"), [("to_sparse", "scipy"), ("to_frame", "pandas")])
def test_without_the_extra_the_error_names_it(encoded, monkeypatch, method, module):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, f"{module}.sparse", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'maira-sae\[arrays\]'") as error:
        getattr(encoded, method)()
    assert error.value.extra == "arrays" and isinstance(error.value, ImportError)


def test_the_client_imports_without_scipy_or_pandas():
    code = (
        "import sys; sys.modules['scipy'] = sys.modules['pandas'] = sys.modules['tqdm'] = None; "
        "import maira_sae.client, maira_sae.client.arrays, maira_sae.client.feature_page; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
