"""What a hostile DICOM file costs the server's decoder: seconds and peak RSS growth per case.

    python -m bench.dicom_bombs                              # this checkout
    python -m bench.dicom_bombs --checkout /tmp/base         # another checkout (before)

Cases (tests/support/dicom_bombs.py builds them): a 1 MB Deflated Explicit VR file whose data
set inflates to 1 GiB; a JPEG 2000 frame that is 12000 x 12000 in a 64 x 64 header; VOI LUT
and Modality LUT descriptors that claim 4096 entries where the data holds 16. Each is decoded
in a fresh subprocess the way the server prepares a request (servicer: the image memory
budget's decoder around ``from_proto.image_decoder`` under the default limits), after a
warm-up decode (imports, plugins); the peak is VmHWM after resetting it
(/proc/self/clear_refs), minus VmRSS before. Targets (issue 25): refused in under 1 s with
peak RSS growth under 100 MB.
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
REFUSED = ("ImageDecodeError", "ImageTooLargeError")  # INVALID_ARGUMENT, OUT_OF_RANGE

# Run in a fresh interpreter: argv = checkout ("" for this one), warm-up file, case file.
_CHILD = r"""
import atexit, json, os, shutil, sys, tempfile, time
checkout, warm_path, case_path = sys.argv[1:4]
if checkout:  # import that checkout as maira_sae, linked as the Makefile's import tree does
    root = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, root)
    package = os.path.join(root, "maira_sae")
    os.mkdir(package)
    links = {"__init__.py": "protos/maira_sae/__init__.py", "v1": "protos/maira_sae/v1",
             "sae": "sae", "server": "server", "client": "client"}
    for name, target in links.items():
        os.symlink(os.path.join(os.path.abspath(checkout), target), os.path.join(package, name))
    sys.path.insert(0, root)
import maira_sae.client.imaging.decode as images
from maira_sae.server.service.config import LimitsConfig
from maira_sae.server.service.from_proto import image_decoder
from maira_sae.server.service.image_memory import ImageMemoryBudget

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

limits = LimitsConfig()  # the server's defaults
budget = ImageMemoryBudget(limits.image_memory_bytes, limits.max_image_pixels)
server_decoder = image_decoder(limits)

def decode(data):
    with budget.hold() as hold:  # as servicer._prepare does
        return hold.decoder(server_decoder)(data, None, "study.frontal")

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


def measure(checkout: str, warm: Path, case: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, checkout, str(warm), str(case)],
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
    parser.add_argument("--checkout", default="", help="another checkout's root to measure")
    args = parser.parse_args(argv)
    report: dict = {"checkout": args.checkout or "this one", "cases": {}}
    with tempfile.TemporaryDirectory() as folder:
        warm = Path(folder, "warm.dcm")
        warm.write_bytes(lying_jpeg2000(64))  # an honest 64 x 64 JPEG 2000 file
        for case, data in cases().items():
            path = Path(folder, f"{case}.dcm")
            path.write_bytes(data)
            figures = measure(args.checkout, warm, path)
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
