"""Damaged checkpoints and workdir problems: a damaged newest checkpoint is moved
aside and the run resumes from the previous one, ending with the digest of a run
never stopped; workdir problems are one-line errors before anything compiles."""

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_configs import CARTPOLE

import dqnx
from dqnx import checkpoint, checks, evaluate, shell, train
from dqnx.config import ConfigError
from dqnx.shell.resume import Resumer

ROOT = Path(__file__).resolve().parents[1]

# Checkpoints at env steps 464, 864, 1264, 1664 and 2000, all kept.
CONFIG = CARTPOLE.replace(keep_checkpoints=10, tensorboard=False)


def _no_compiling(config):
    raise AssertionError("compiled a program")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run never stopped (every checkpoint kept) and its program, which the
    resumed runs below reuse instead of compiling their own."""
    programs = []

    def build(config):
        programs.append(train.make_program(config))
        return programs[-1]

    workdir = tmp_path_factory.mktemp("reference")
    summary = shell.run(CONFIG, workdir, quiet=True, program_factory=build)
    steps = checkpoint.Checkpointer(workdir / "checkpoints").all_steps()
    assert len(steps) == 5 and steps[-1] == 2_000
    return workdir, summary, steps, programs[0]


def _stopped_copy(reference, tmp_path, stop_at: int) -> Path:
    """The reference workdir as a run stopped after the checkpoint ``stop_at``
    would have left it (metrics past it are left in, resuming must cut them)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for step in reference[2]:
        if step > stop_at:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    (workdir / "summary.json").unlink()
    return workdir


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _array_file(ckpt: Path) -> Path:
    """The largest array data file: the replay buffers."""
    files = [p for p in (ckpt / "state").rglob("*") if p.parent.name == "d"]
    return max(files, key=os.path.getsize)


def _as_written_before_manifests(ckpt: Path) -> None:
    (ckpt / checkpoint.MANIFEST).unlink()
    meta = json.loads((ckpt / "meta" / "metadata").read_text())
    del meta["manifest"]
    (ckpt / "meta" / "metadata").write_text(json.dumps(meta))


def _garbage_arrays(ckpt: Path) -> None:
    """A checkpoint from before manifests whose array files were overwritten: only
    reading the arrays, after the program compiled, finds it."""
    _as_written_before_manifests(ckpt)
    for path in (ckpt / "state").rglob("*"):
        if path.parent.name == "d":
            path.write_bytes(b"\x00garbage")


DAMAGE = {
    "array data": lambda ckpt: _flip_byte(_array_file(ckpt)),
    "dqnx metadata": lambda ckpt: _flip_byte(ckpt / "meta" / "metadata"),
    "orbax metadata": lambda ckpt: _flip_byte(ckpt / "state" / "_METADATA"),
    "commit marker": lambda ckpt: _flip_byte(ckpt / checkpoint.COMMIT_MARKER),
    "no manifest (killed before it)": lambda ckpt: (ckpt / checkpoint.MANIFEST).unlink(),
    "arrays, found after compiling": _garbage_arrays,
}


def _metric_rows(workdir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["env_steps"], r["loss"], r.get("eval_return")) for r in rows]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    damage, reference, tmp_path, capsys
):
    ref_dir, ref_summary, steps, program = reference
    previous, newest = steps[1], steps[2]
    workdir = _stopped_copy(reference, tmp_path, stop_at=newest)
    DAMAGE[damage](workdir / "checkpoints" / str(newest))
    capsys.readouterr()
    summary = shell.run(CONFIG, workdir, program_factory=lambda config: program)
    assert summary["resumed_from"] == previous
    assert summary["params_digest"] == ref_summary["params_digest"]
    corrupt = workdir / "checkpoints" / f"{newest}.corrupt"
    assert corrupt.is_dir()  # renamed, never deleted; the run wrote its own `newest` again
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"checkpoints/{newest} is " in warnings[0]
    assert warnings[0].endswith(f"; moved it aside to {corrupt}")
    # Metrics cut back to `previous`, then written again: the reference's rows exactly.
    assert _metric_rows(workdir) == _metric_rows(ref_dir)


def test_none_usable_is_an_error_listing_what_was_tried(reference, tmp_path):
    _, _, steps, _ = reference
    workdir = _stopped_copy(reference, tmp_path, stop_at=steps[1])
    DAMAGE["array data"](workdir / "checkpoints" / str(steps[0]))
    DAMAGE["commit marker"](workdir / "checkpoints" / str(steps[1]))
    before = (workdir / "metrics.jsonl").read_text()
    with pytest.raises(checkpoint.CheckpointError) as e:
        shell.run(CONFIG, workdir, quiet=True, program_factory=_no_compiling)
    message = str(e.value)
    assert "\n" not in message and "no usable checkpoint" in message
    assert f"{steps[1]} is corrupt (commit_success.txt changed" in message
    assert f"{steps[0]} is corrupt (state/" in message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(
        f"{s}.corrupt" for s in steps[:2]
    )
    # Running again does not start over silently: the moved-aside ones block it.
    with pytest.raises(checkpoint.CheckpointError, match="only ones moved aside"):
        shell.run(CONFIG, workdir, quiet=True, program_factory=_no_compiling)
    assert (workdir / "metrics.jsonl").read_text() == before


def test_changed_flags_stay_an_error_past_a_damaged_checkpoint(reference, tmp_path):
    _, _, steps, _ = reference
    workdir = _stopped_copy(reference, tmp_path, stop_at=steps[2])
    DAMAGE["array data"](workdir / "checkpoints" / str(steps[2]))
    with pytest.raises(ConfigError, match=r"--gamma \(0.99 -> 0.5\)"):
        shell.run(CONFIG.replace(gamma=0.5), workdir, quiet=True, program_factory=_no_compiling)


def test_restore_step_picks_a_checkpoint(reference, tmp_path):
    ref_dir, ref_summary, steps, program = reference
    workdir = _stopped_copy(reference, tmp_path, stop_at=steps[-1])
    with pytest.raises(ConfigError, match=r"--restore_step=123: .* no checkpoint 123 \(it has: 4"):
        shell.run(CONFIG.replace(restore_step=123), workdir, program_factory=_no_compiling)
    # A damaged checkpoint picked by hand is an error, left where it is.
    DAMAGE["dqnx metadata"](workdir / "checkpoints" / str(steps[0]))
    with pytest.raises(checkpoint.CheckpointDamaged, match=f"checkpoints/{steps[0]} is corrupt"):
        shell.run(CONFIG.replace(restore_step=steps[0]), workdir, program_factory=_no_compiling)
    assert (workdir / "checkpoints" / str(steps[0])).is_dir()
    summary = shell.run(
        CONFIG.replace(restore_step=steps[1]), workdir, quiet=True,
        program_factory=lambda config: program,
    )  # fmt: skip
    assert summary["resumed_from"] == steps[1]
    assert summary["params_digest"] == ref_summary["params_digest"]
    for step in steps[2:]:  # the newer ones, moved aside before the run wrote its own
        assert (workdir / "checkpoints" / f"{step}.skipped").is_dir()
    assert _metric_rows(workdir) == _metric_rows(ref_dir)


def test_evaluate_takes_restore_step_and_skips_damaged_checkpoints(reference, tmp_path, capsys):
    _, _, steps, _ = reference
    workdir = _stopped_copy(reference, tmp_path, stop_at=steps[-1])
    newest = workdir / "checkpoints" / str(steps[-1])
    DAMAGE["array data"](newest)
    # --restore_step (alias of --step): a missing or damaged checkpoint is one line, exit 2.
    assert evaluate.main(["--workdir", str(workdir), "--restore_step=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"has no checkpoint 7 (it has: {', '.join(map(str, steps))})")
    assert evaluate.main(["--workdir", str(workdir), f"--restore_step={steps[-1]}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {newest} is corrupt (state/") and "\n" not in err
    # Without it, evaluation passes over a damaged checkpoint and renames nothing.
    notes = []
    resumer = Resumer(
        checkpoint.Checkpointer(workdir / "checkpoints"), move_aside=False, warn=notes.append
    )
    assert resumer.pick() == steps[-2]
    assert len(notes) == 1 and notes[0].endswith("changed since it was written); skipping it")
    assert newest.is_dir()


def test_moved_aside_checkpoints_are_never_listed_again(tmp_path):
    state = {"x": np.arange(6.0, dtype=np.float32)}
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
    for step in (10, 20):
        ckpt.save(step, state, {"config": {}})
    assert ckpt.move_aside(20) == tmp_path / "20.corrupt"
    ckpt.save(20, state, {"config": {}})
    assert ckpt.move_aside(20) == tmp_path / "20.corrupt-2"
    ckpt.close()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2)  # cleans up orbax's temporary dirs
    assert ckpt.all_steps() == [10] and ckpt.latest_step() == 10
    for step in (30, 40, 50):  # keep=2 deletes old steps, never the moved-aside ones
        ckpt.save(step, state, {"config": {}})
    assert ckpt.all_steps() == [40, 50]
    assert [p.name for p in ckpt.moved_aside()] == ["20.corrupt", "20.corrupt-2"]
    # A checkpoint from before manifests reads; one without its promised manifest does not.
    _as_written_before_manifests(ckpt.path(40))
    assert ckpt.read_meta(40)["step"] == 40
    (ckpt.path(50) / checkpoint.MANIFEST).unlink()
    with pytest.raises(checkpoint.CheckpointDamaged, match="half-written"):
        ckpt.read_meta(50)
    ckpt.close()


def test_workdir_problems_are_one_line_errors_before_compiling(tmp_path, monkeypatch):
    def fails(workdir, match):
        with pytest.raises(ConfigError, match=match) as e:
            shell.run(CONFIG, workdir, quiet=True, program_factory=_no_compiling)
        assert "\n" not in str(e.value)

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    fails(a_file, f"--workdir={a_file} is a file, not a directory")
    fails(a_file / "run", f"--workdir={a_file / 'run'}: {a_file} is a file, not a directory")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "checkpoints").write_text("x")
    fails(tmp_path / "w", "checkpoints is a file, not a directory")

    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    fails(locked / "new" / "run", f"{locked} is not writable \\(the workdir would be created in")
    fails(locked, f"--workdir={locked} is not writable$")
    monkeypatch.undo()

    need = checks.checkpoint_bytes(CONFIG)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5000, 5000))
    fails(tmp_path / "new", r"has 4.9 KiB free, but one checkpoint of this run needs about 1\.")
    monkeypatch.undo()
    assert need > 1000 * 2 * (2 * 4 * 4 + 9)  # at least the replay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked", "w"]  # none made


def test_checkpoint_size_estimate_covers_a_real_checkpoint(reference):
    ckpt = reference[0] / "checkpoints" / str(reference[2][-1])
    actual = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert actual <= checks.checkpoint_bytes(CONFIG) <= actual + 2**20 + 100_000


def test_workdir_that_is_a_file_on_the_command_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "run.py"), "--env_name=CartPole-v1",
         f"--workdir={a_file}"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --workdir={a_file} is a file, not a directory"
    ], r.stderr


def test_host_actor_run_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    config = dqnx.Config(
        env_name="gymnasium:CartPole-v1", num_envs=4, actor_threads=2, buffer_size=1000,
        batch_size=32, hidden_sizes=(8,), learning_starts=64, total_steps=464, log_every=200,
        checkpoint_every=200, eval_every=0, eval_episodes=1, tensorboard=False,
        env_options=("max_episode_steps=60",),
    )  # fmt: skip
    train.run(config, tmp_path, quiet=True)
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == [264, 464]
    DAMAGE["array data"](tmp_path / "checkpoints" / "464")
    summary = train.run(config.replace(total_steps=664), tmp_path)
    assert summary["resumed_from"] == 264 and summary["env_steps_per_seed"] == 664
    assert (tmp_path / "checkpoints" / "464.corrupt").is_dir()
    assert "checkpoints/464 is corrupt" in capsys.readouterr().err
    assert [r[0] for r in _metric_rows(tmp_path)] == [264, 464, 664]


def test_extending_an_annealed_run_says_why_total_steps_is_fixed():
    from dqnx.shell.loop import check_drift

    config = CONFIG.replace(anneal_lr=True, workdir="RUN")
    saved = {"config": config.replace(total_steps=1_000).to_dict()}
    with pytest.raises(ConfigError, match=r"anneals to 0 over its --total_steps=1000 \(--anneal"):
        check_drift(config.replace(total_steps=2_000), saved)
    check_drift(config.replace(total_steps=2_000, allow_config_change=True), saved)
    # Without annealing, total_steps is free to change.
    check_drift(
        CONFIG.replace(total_steps=2_000), {"config": CONFIG.replace(total_steps=1_000).to_dict()}
    )
