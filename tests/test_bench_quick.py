"""The benchmark runs end to end on a tiny size and reports every figure it promises."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "expand_bench.py"


def test_quick_benchmark_reports_all_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--gpu",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert {"machine", "settings", "sizes"} <= report.keys()
    size = report["sizes"]["quick"]
    assert size["expand"]["peak_rss_mb"] > 0 and size["floor"]["seconds"] > 0
    assert size["in_memory"]["peak_rss_mb"] > 0
    assert size["verify"]["full"]["passed"] and size["verify"]["streamed"]["passed"]
    assert set(size["ratios"]) >= {
        "expand_time_over_floor",
        "expand_rss_over_largest_tensor",
        "in_memory_rss_over_expand_rss",
        "verify_full_rss_over_streamed_rss",
    }
    assert size["expand_verified"]["mode"] == "streamed"
    assert size["expand_noise"]["seconds"] > 0 and report["startup"]["help_seconds"] > 0
    assert set(size["ratios"]) >= {
        "noise_time_over_plain",
        "verified_time_over_no_verify",
        "verified_rss_over_no_verify",
    }
    # the GPU section runs its CPU half where there is no CUDA
    gpu = report["gpu"]["quick"]
    assert gpu["errors"] == {} and {"cpu", "cpu_noise", "floor"} <= gpu["seconds"].keys()
    if gpu["cuda"]:
        assert gpu["targets"]["same_bytes"]
    assert set(size["targets"]) >= {
        "expand_time_le_1.3x_floor",
        "expand_rss_le_1.5x_largest_plus_400mb",
        "in_memory_rss_ge_5x_expand",
    }
    assert size["target"]["params"] > size["source"]["params"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # work dir cleaned up
