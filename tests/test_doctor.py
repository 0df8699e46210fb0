import json

from conftest import run_cli

from labkit import doctor


def test_doctor_json_reports_every_check_with_a_status(chat_model_path):
    out = run_cli("doctor", "--json", "--profile", "cpu")
    checks = json.loads(out.stdout)
    names = {c["name"] for c in checks}
    assert {"python", "torch", "device", "gpus", "versions", "ram", "disk", "/dev/shm", "ray", "jupyter kernel",
            "model smollm2-135m-instruct", "hub"} <= names
    assert all(c["status"] in ("ok", "warn", "fail") for c in checks)
    failed = [c for c in checks if c["status"] == "fail"]
    assert out.returncode == (1 if failed else 0)
    assert not failed, f"this test machine should be ready for the labs: {failed}"


def test_missing_model_is_blocking_and_says_how_to_fix(isolated_home):
    out = run_cli("doctor", "--profile", "cpu")
    assert out.returncode == 1
    assert "FAIL" in out.stdout and "labkit models pull --profile cpu" in out.stdout
    assert "blocking problems found" in out.stdout


def test_bad_dtype_setting_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("LABKIT_DTYPE", "float7")
    device = next(c for c in doctor.run_checks("cpu") if c.name == "device")
    assert device.status == "fail" and "LABKIT_DTYPE" in device.fix


def test_table_shows_fixes_only_for_problems():
    checks = [doctor.Check("a", "ok", "fine", "never shown"), doctor.Check("b", "warn", "meh", "do x")]
    table = doctor.format_table(checks)
    assert "never shown" not in table and "fix: do x" in table and "ready for the labs" in table
