"""The readers' fuzzers (tests/fuzz_readers.py) in a pytest process of their own: a reader that kills its process
with a signal (a native crash in pycocotools, PIL or OpenCV) or hangs fails this test instead of the whole suite."""

import signal
import subprocess
import sys
from pathlib import Path

from conftest import spawn

FUZZERS = Path(__file__).with_name("fuzz_readers.py")


def test_no_reader_crashes_hangs_or_raises_anything_but_otxlite_errors():
    try:
        result = spawn([sys.executable, "-m", "pytest", FUZZERS, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                        "--rootdir", FUZZERS.parent.parent], timeout=1200)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the fuzzers hung for {err.timeout} s: {(err.stdout or b'')[-3000:]!r}") from None
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode >= 0, f"a reader killed the process with {signal.Signals(-result.returncode).name}:\n{output}"
    assert result.returncode == 0, output
    assert " passed" in result.stdout and " failed" not in result.stdout, output
