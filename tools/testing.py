"""What the Python tests share: skipping cleanly when an optional module is missing.

CI installs python3-numpy and python3-pil only; torch, regex and onnx come with
UMG_WITH_TOOLS=1 scripts/install-deps.  A test that needs one of them calls
require(), which exits with SKIP when the module is absent; tests/CMakeLists.txt
registers SKIP as the tests' SKIP_RETURN_CODE, so ctest reports them as skipped.
"""
import importlib
import sys

SKIP = 77


def require(module, debian_package):
    """The imported module, or exit SKIP with a message saying what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"SKIP: Python module {module!r} is not installed ({debian_package}; "
              f"UMG_WITH_TOOLS=1 scripts/install-deps installs it)")
        sys.exit(SKIP)
