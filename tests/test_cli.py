import sys

import keras
import pytest

from fp16cont.cli import main
from fp16cont.bench.demo import run_demo
from tests.conftest import MODEL_BUILDERS, start_beside


def test_demo_trains_both_precisions_on_real_digits(capsys):
    from fp16cont.bench.demo import demo_notes

    report = run_demo(pretrain_epochs=2, epochs=1, verbose=2, width=64)
    printed = capsys.readouterr().out
    assert "[pre-training] float32" in printed  # every progress stream is labelled
    assert "[1/2] float32" in printed and f"[2/2] {report.precisions[1]}" in printed
    assert report.precisions[0] == "float32" and report.precisions[1] in ("bfloat16", "float16")
    notes = demo_notes(report, fast_16bit=False)
    assert "pure 16-bit, fp16cont" in notes
    float32, low = (report.runs_for(p)[0] for p in report.precisions)
    if low.steady_samples_per_second <= 1.05 * float32.steady_samples_per_second:
        assert "not faster than float32 here: this processor has no fast 16-bit arithmetic" in notes
    for run in (float32, low):
        assert 0.5 < run.final.val_accuracy <= 1.0 and run.initial_val_accuracy is not None
        assert run.steady_samples_per_second > 0 and run.wall_seconds > 0
    assert low.weight_bytes < 0.6 * float32.weight_bytes
    assert "val acc before" in report.table()


def test_audit_command_prints_report(tmp_path, capsys):
    path = tmp_path / "m.keras"
    MODEL_BUILDERS["sequential"]().save(path)
    assert main(["audit", str(path), "--precision", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "OK" in out


def test_audit_command_reports_errors_with_exit_status_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.keras")]) == 2
    assert "SourceFileNotFoundError" in capsys.readouterr().err


@pytest.fixture(scope="module", autouse=True)
def entry_point_help(request):
    """``python -m fp16cont --help``, started with the module: it runs beside the demo test."""
    yield from start_beside(request, "test_python_dash_m_entry_point_help", [sys.executable, "-m", "fp16cont", "--help"])


@pytest.mark.subprocess
def test_python_dash_m_entry_point_help(entry_point_help):
    stdout, stderr = entry_point_help.communicate(timeout=120)
    assert entry_point_help.returncode == 0 and "demo" in stdout
    assert stderr == ""  # no TensorFlow startup log (cudart, cuInit, cpu_feature_guard)
    assert keras.config.floatx() == "float32"


@pytest.mark.parametrize("args,named", [(["--batch-size", "-5"], "batch_size"), (["--seed", "-1"], "seed"),
                                        (["--epochs", "0"], "epochs")])
def test_demo_refuses_bad_arguments_before_any_training(capsys, args, named):
    assert main(["demo", *args]) == 2
    out, err = capsys.readouterr()
    assert f"InvalidArgumentError: Argument `{named}`" in err and "Traceback" not in err
    assert "[pre-training]" not in out  # nothing was trained first
