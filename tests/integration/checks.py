"""Checks for the test scripts that hold under `python -O` / PYTHONOPTIMIZE, which strip `assert`
statements (tests/lint_test_scripts.py keeps bare asserts out of the test scripts)."""
import os

# How much slower than a plain build the binaries run: set by CMake for the script tests, 4 under
# AddressSanitizer, times -DDNPO_TEST_TIME_SCALE=n (a slow or busy machine). The scripts' time
# bounds are multiplied by it.
TIME_SCALE = float(os.environ.get("DNPO_TIME_SCALE", "1"))


class CheckFailed(AssertionError):
    """A check of a test script failed."""


def check(cond, msg=""):
    """Raises CheckFailed(msg) unless cond. msg may be a callable, called only on failure (for a
    message that costs something to build or is valid only when the check fails)."""
    if not cond:
        raise CheckFailed(msg() if callable(msg) else msg)
