"""The server's stderr is JSON lines only: library warnings included, never with request content."""

import json
import subprocess
import sys

SCRIPT = """
import numpy as np
import pydicom
from maira_sae.server.service.logs import configure_logging

configure_logging("INFO")
np.array([0.0]) / np.array([0.0])
dataset = pydicom.Dataset()
dataset.PatientName = "Doe^Jane" + "x" * 70
"""


def test_library_warnings_are_json_lines_and_pydicom_s_keep_no_patient_data():
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    lines = run.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    numpy_warning, pydicom_warning = [e for e in events if e["logger"] == "maira_sae.warnings"]
    assert numpy_warning["category"] == "RuntimeWarning"
    assert "invalid value" in numpy_warning["detail"]
    assert pydicom_warning["event"] == "library_warning"
    assert pydicom_warning["source"].startswith("pydicom")
    assert "detail" not in pydicom_warning
    assert "Doe" not in run.stderr
