import subprocess
import sys

import keras

from fp16cont.cli import main
from fp16cont.bench.demo import render_demo, run_demo
from tests.conftest import MODEL_BUILDERS


def test_demo_trains_both_precisions_on_real_digits(capsys):
    from fp16cont.bench.demo import demo_notes

    rows = run_demo(pretrain_epochs=1, epochs=2, verbose=2)
    printed = capsys.readouterr().out
    assert "[pre-training] float32" in printed  # every progress stream is labelled
    assert "[1/2] float32:" in printed and f"[2/2] {rows[1].label}:" in printed
    notes = demo_notes(rows, fast_16bit=False)
    assert f"{rows[1].label}: 16-bit variables, compute and optimizer state" in notes
    slow = [rows[0], type(rows[1])(rows[1].label, 0.9, 0.9, 1.0, rows[0].samples_per_second, 1)]
    assert "not faster than float32 here: this processor has no fast 16-bit arithmetic" in demo_notes(slow, False)
    assert [r.label for r in rows][0] == "float32"
    assert "fp16cont pure" in rows[1].label
    assert rows[0].accuracy_before == rows[0].accuracy_before  # not NaN
    for row in rows:
        assert 0.5 < row.accuracy_after <= 1.0
        assert row.samples_per_second > 0 and row.wall_seconds > 0
    assert rows[1].weight_bytes < 0.6 * rows[0].weight_bytes
    table = render_demo(rows)
    assert "acc before" in table and "float32" in table


def test_audit_command_prints_report(tmp_path, capsys):
    path = tmp_path / "m.keras"
    MODEL_BUILDERS["sequential"]().save(path)
    assert main(["audit", str(path), "--precision", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "OK" in out


def test_audit_command_reports_errors_with_exit_status_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.keras")]) == 2
    assert "InvalidSourceError" in capsys.readouterr().err


def test_python_dash_m_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "fp16cont", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout
    assert done.stderr == ""  # no TensorFlow startup log (cudart, cuInit, cpu_feature_guard)
    assert keras.config.floatx() == "float32"
