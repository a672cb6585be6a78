"""A run whose workdir is in a bucket (``gs://``), through the same code path on a
local directory: ``dqnx.files.is_remote`` forced true makes every file a whole-file
write (no appends, no temporary file + rename), as on Cloud Storage."""

import json

import pytest
from etils import epath
from tiny_configs import CARTPOLE

from dqnx import files, train
from dqnx.errors import ConfigError

TINY = CARTPOLE.replace(
    num_seeds=1,
    buffer_size=500,
    batch_size=16,
    hidden_sizes=(8,),
    learning_starts=32,
    total_steps=800,
    eval_every=800,
    eval_episodes=1,
    tensorboard=False,
)


@pytest.fixture(scope="module")
def local_digest(tmp_path_factory):
    return train.run(TINY, tmp_path_factory.mktemp("local"), quiet=True)["params_digest"]


def test_remote_branch_writes_whole_files_and_resumes_bit_exact(
    tmp_path, monkeypatch, local_digest
):
    remote = []
    monkeypatch.setattr(files, "is_remote", lambda path: remote.append(str(path)) or True)
    monkeypatch.setattr(files, "Appender", _NoAppend(files.Appender))
    workdir = epath.Path(tmp_path) / "run"
    part = train.run(TINY.replace(total_steps=400), workdir, quiet=True)
    assert part["params_digest"] != local_digest
    resumed = train.run(TINY, workdir, quiet=True)
    assert resumed["resumed_from"] == 400
    assert resumed["params_digest"] == local_digest
    assert any(p.endswith("metrics.jsonl") for p in remote)  # the remote branch was taken

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["env_steps"] for x in lines]
    assert steps == sorted(set(steps)) and 400 in steps and steps[-1] == 800
    rows = (workdir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("env_steps,")
    assert [int(r.split(",")[0]) for r in rows[1:]] == steps
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["params_digest"] == local_digest and summary["resumed_from"] == 400
    assert json.loads((workdir / "config.json").read_text())["total_steps"] == 800
    ckpts = workdir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["400", "800"]
    manifest = json.loads((ckpts / "800" / "dqnx_manifest.json").read_text())
    assert manifest["format"] == "dqnx-checkpoint-v1" and len(manifest["files"]) > 3
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file + rename


class _NoAppend:
    """Wraps ``_Appender`` so that any local append (``open(..., "a")``) fails the test."""

    def __init__(self, cls):
        self.cls = cls

    def __call__(self, path):
        appender = self.cls(path)
        assert appender._remote, f"{path} was opened for appending"
        return appender


def test_gs_workdir_without_gcsfs_is_one_line_error(monkeypatch):
    real = files.importlib.import_module

    def no_gcsfs(name, *args):
        if name == "gcsfs":
            raise ImportError("No module named 'gcsfs'")
        return real(name, *args)

    monkeypatch.setattr(files.importlib, "import_module", no_gcsfs)
    with pytest.raises(ConfigError) as e:
        train.run(TINY, "gs://bucket/run", quiet=True)
    assert str(e.value) == (
        "--workdir=gs://bucket/run needs the 'gcsfs' package: pip install 'dqnx[gcs]'"
    )


def test_is_remote_and_gs_paths():
    assert files.is_remote("gs://bucket/run") and not files.is_remote("runs/x")
    path = files.as_path("gs://bucket/run") / "checkpoints"
    assert str(path) == "gs://bucket/run/checkpoints" and path.name == "checkpoints"
