"""Package hygiene: importing the engine pulls in no optional library and changes no global torch state, and
every source file compiles without a warning."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import streamdiff

OPTIONAL = ("cv2", "av", "mss", "pyvirtualcam", "fastapi", "uvicorn", "aiortc", "coremltools", "yaml", "matplotlib")


def test_import_pulls_in_no_optional_library():
    code = (
        "import sys, torch; before = (torch.get_default_dtype(), torch.backends.cudnn.benchmark);"
        "import streamdiff, streamdiff.stream, streamdiff.cli; streamdiff.cli.build_parser();"
        f"bad = [m for m in {OPTIONAL!r} if m in sys.modules];"
        "after = (torch.get_default_dtype(), torch.backends.cudnn.benchmark);"
        "print(bad, before == after)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] True"


def test_every_source_file_compiles_without_a_warning():
    """An invalid escape sequence (a backslash in a diagram of a docstring, say) is a SyntaxWarning that Python 3.12
    prints at every fresh import and that later versions turn into an error."""
    sources = sorted(Path(streamdiff.__file__).parent.rglob("*.py"))
    assert sources
    for path in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")
