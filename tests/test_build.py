"""The build: the CUDA extension exists whenever it was required, and stays framework-free."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("GFN_FAST_CUDA") != "1",
                    reason="only checked where the build forced the extension (GFN_FAST_CUDA=1)")
def test_cuda_extension_was_built():
    from gfn_fast import _C

    assert hasattr(_C, "balance_rows_forward") and hasattr(_C, "balance_rows_backward")


def test_cuda_sources_include_no_pytorch_headers():
    for path in list((ROOT / "csrc").rglob("*.cu*")) + list((ROOT / "csrc").rglob("*.h")) + \
            list((ROOT / "csrc").rglob("*.cpp")):
        text = path.read_text()
        assert not re.search(r"#include\s*[<\"](torch|ATen|c10)/", text), path


def test_setup_lists_every_package():
    """A package missing from setup.py still imports from an editable install but is left out
    of a wheel; compare the list with the tree."""
    text = (ROOT / "setup.py").read_text()
    listed = set(re.findall(r'"(gfn_fast(?:\.\w+)*)"', text[text.index("packages=["):]))
    tree = {".".join(path.parent.relative_to(ROOT).parts)
            for path in (ROOT / "gfn_fast").rglob("__init__.py")
            if "__pycache__" not in path.parts and path.parent.name != "kernels"}
    assert tree | {"gfn_fast.kernels"} <= listed
