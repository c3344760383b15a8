"""The measurement tools whose output the closing notes quote, run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_torch


@needs_torch
def test_new_lengths_tool_counts_one_compile_per_layer(tmp_path):
    """tools/new_lengths.py (the closing notes' evidence for the converted generator at many lengths),
    run as a user runs it: two lengths, four modules, the planning of the second length timed."""
    tool = Path(__file__).resolve().parent.parent / "tools" / "new_lengths.py"
    out = tmp_path / "out.json"
    # A cache of its own: another test of this worker may have built one of the generator's layers.
    env = {**os.environ, "TVM_CONVT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, str(tool), "--lengths", "2", "--steady", "1", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["modules_compiled"] == 4 and [r["compiled_so_far"] for r in report["rows"]] == [4, 4]
    assert 0 < report["planning_at_a_new_length_ms"]["max"] < report["rows"][1]["steady_ms"]
    # The four layers alone are timed (hooks); the eager generator beside it, at lengths the converted
    # model never runs, its four ConvTranspose1d layers called once a call.
    for row in report["rows"][1:]:
        assert row["layers_first_ms"] > 0 and row["layers_steady_ms"] > 0
        assert row["eager_frames"] == row["frames"] + 1 and row["eager_transposed_calls"] == 4 * 2
        assert row["eager_first_ms"] > 0 and row["eager_steady_ms"] > 0
    assert report["tvm_convt_layers_first_over_steady"]["of"] == report["eager_first_over_steady"]["of"] == 1
