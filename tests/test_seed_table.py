"""scripts/seed_table.py: per-seed final returns against a target, from run files."""

import json

import seed_table


def _run(path, seed, returns):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"seed": seed, "env_name": "CartPole-v1"}))
    (path / "summary.json").write_text(json.dumps({"eval_return_per_seed": returns}))
    return path


def test_row_counts_the_seeds_at_target_and_records(tmp_path, capsys):
    a = _run(tmp_path / "a", 100, [500.0, 435.1])
    b = _run(tmp_path / "b", 102, [480.0])
    record = tmp_path / "record"
    assert seed_table.main([str(a), str(b), "--target=475", f"--record={record}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "| CartPole-v1 | 100-102 | 500.0, 435.1, 480.0 | 2/3 >= 475 | 471.7 | 435.1 |"
    # The recorded files give the same row.
    assert seed_table.main(["--target=475", f"--recorded={record}"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == out[-1]


def test_no_runs_is_an_error(tmp_path, capsys):
    assert seed_table.main(["--target=1"]) == 2
    assert seed_table.main([str(tmp_path / "missing"), "--target=1"]) == 2
