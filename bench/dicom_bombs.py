"""What a hostile DICOM file costs the decoder: seconds and peak RSS growth per case.

    python -m bench.dicom_bombs                          # this checkout's decoder
    python -m bench.dicom_bombs --client-dir /tmp/base/client   # another checkout's (before)

Cases (tests/support/dicom_bombs.py builds them): a 1 MB Deflated Explicit VR file whose data
set inflates to 1 GiB; a JPEG 2000 frame that is 12000 x 12000 in a 64 x 64 header; VOI LUT
and Modality LUT descriptors that claim 4096 entries where the data holds 16. Each is decoded
with ``decode_image`` under the server's default limits in a fresh subprocess, after a warm-up
decode (imports, plugins); the peak is VmHWM after resetting it (/proc/self/clear_refs), minus
VmRSS before. Targets (issue 25): refused in under 1 s with peak RSS growth under 100 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support

from tests.support.dicom_bombs import deflate_bomb, lut_file, lying_jpeg2000

TARGET_SECONDS = 1.0
TARGET_GROWTH_MB = 100.0
REFUSED = ("ImageDecodeError", "ImageTooLargeError")  # what the server maps to a status

# Run in a fresh interpreter: argv = client dir ("" for the installed one), warm-up file, case.
_CHILD = r"""
import atexit, json, os, shutil, sys, tempfile, time
client_dir, warm_path, case_path = sys.argv[1:4]
if client_dir:  # import that checkout's client as maira_sae.client
    root = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, root)
    os.mkdir(os.path.join(root, "maira_sae"))
    open(os.path.join(root, "maira_sae", "__init__.py"), "w").close()
    os.symlink(os.path.abspath(client_dir), os.path.join(root, "maira_sae", "client"))
    sys.path.insert(0, root)
from maira_sae.client.images import DecodeLimits, decode_image
import maira_sae.client.images as images

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

limits = DecodeLimits(max_bytes=32 * 2**20, max_pixels=40_000_000)  # the server's defaults
decode = lambda data: decode_image(data, None, name="study.frontal", limits=limits)
decode(open(warm_path, "rb").read())
data = open(case_path, "rb").read()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
start = time.perf_counter()
try:
    outcome = "decoded %s" % (decode(data).shape,)
except Exception as exc:
    outcome = "%s: %s" % (type(exc).__name__, exc)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_growth_mb": (status("VmHWM") - before) / 1024,
                  "outcome": outcome[:300], "client": os.path.dirname(images.__file__)}))
"""


def cases() -> dict[str, bytes]:
    return {
        "deflate_bomb_1MB_to_1GiB": deflate_bomb(2**30),
        "jpeg2000_12000x12000_in_64x64": lying_jpeg2000(12000),
        "voi_lut_4096_claimed_16_held": lut_file("VOILUTSequence"),
        "modality_lut_4096_claimed_16_held": lut_file("ModalityLUTSequence"),
    }


def measure(client_dir: str, warm: Path, case: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, client_dir, str(warm), str(case)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        return {"crashed": result.returncode, "stderr": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--client-dir", default="", help="a checkout's client/ folder to measure instead"
    )
    args = parser.parse_args(argv)
    report: dict = {"client_dir": args.client_dir or "this checkout", "cases": {}}
    with tempfile.TemporaryDirectory() as folder:
        warm = Path(folder, "warm.dcm")
        warm.write_bytes(lying_jpeg2000(64))  # an honest 64 x 64 JPEG 2000 file
        for case, data in cases().items():
            path = Path(folder, f"{case}.dcm")
            path.write_bytes(data)
            figures = measure(args.client_dir, warm, path)
            figures["file_bytes"] = len(data)
            if "seconds" in figures:
                figures["met"] = (
                    figures["seconds"] < TARGET_SECONDS
                    and figures["peak_rss_growth_mb"] < TARGET_GROWTH_MB
                    and figures["outcome"].startswith(REFUSED)
                )
            report["cases"][case] = figures
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
