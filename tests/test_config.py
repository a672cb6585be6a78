import sys
from pathlib import Path

import pytest
from absl import flags as absl_flags

import dqnx
from dqnx import checks
from dqnx import flags as dqnx_flags
from dqnx.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.flags"))


def parse(*args):
    fv = absl_flags.FlagValues()
    dqnx_flags.define_flags(fv)
    fv([sys.argv[0], *args])
    return dqnx_flags.config_from_flags(fv)


def test_all_shipped_configs_validate():
    names = {p.stem for p in CONFIGS}
    assert {
        "cartpole",
        "cartpole_reference",
        "acrobot",
        "breakout_minatar",
        "asterix_minatar",
        "freeway_minatar",
        "seaquest_minatar",
        "space_invaders_minatar",
    } <= names
    for path in CONFIGS:
        checks.validate(parse(f"--flagfile={path}"))


def test_reference_config_is_exact():
    c = parse(f"--flagfile={CONFIGS[0].parent / 'cartpole_reference.flags'}")
    assert (c.num_envs, c.buffer_size, c.batch_size) == (10, 10_000, 128)
    assert c.updates_per_iteration == 1 and c.rollout_steps == 1
    assert c.hidden_sizes == (120, 84) and c.learning_rate == 2.5e-4 and c.loss == "mse"
    assert not c.double_q and c.tau == 1.0 and c.target_update_period == 500
    assert (c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps) == (1.0, 0.05, 250_000)
    assert c.learning_starts == 10_000 and c.total_steps == 500_000 and c.max_grad_norm == 0
    assert c.replay_ratio == 12.8


def test_command_line_overrides_flagfile():
    c = parse(f"--flagfile={CONFIGS[0].parent / 'cartpole.flags'}", "--num_seeds=3", "--seed=7")
    assert c.num_seeds == 3 and c.seed == 7


def test_dict_round_trip():
    c = dqnx.Config(hidden_sizes=(3, 4), dueling=True)
    assert dqnx.Config.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        dqnx.Config.from_dict({"nope": 1})


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"num_envs": 0}, "--num_envs must be a positive integer"),
        ({"total_steps": -5}, "--total_steps must be a positive integer"),
        ({"learning_starts": 10, "batch_size": 32}, "smaller than --batch_size"),
        ({"tau": 0.0}, "--tau"),
        ({"epsilon_end": 1.5}, "--epsilon_end"),
        ({"loss": "l1"}, "--loss"),
        ({"network": "resnet"}, "--network"),
        ({"num_envs": 64, "buffer_size": 32, "batch_size": 16, "learning_starts": 16}, "adds 64"),
        ({"learning_starts": 10**6}, "exceeds --total_steps"),
        ({"num_seeds": 1, "num_devices": 2, "num_envs": 3}, "--num_envs=3 is not divisible by 2"),
        ({"num_devices": 64}, "only 2 device"),
        ({"buffer_size": 10**10, "num_seeds": 64}, "replay buffers need"),
        ({"hidden_sizes": (0,)}, "--hidden_sizes"),
        ({"n_step": 0}, "--n_step must be a positive integer"),
        ({"exploration": "boltzmann"}, "--exploration"),
        ({"importance_exponent": 1.5}, "--importance_exponent"),
        ({"actor_sync_period": 0}, "--actor_sync_period"),
        ({"learner": "c52"}, "--learner must be one of"),
        ({"num_atoms": 1}, "--num_atoms must be an integer >= 2"),
        ({"v_min": 5.0, "v_max": 5.0}, "--v_min must be < --v_max"),
        ({"num_tau_samples": 0}, "--num_tau_samples must be a positive integer"),
        ({"learner": "qr", "munchausen": True}, "--munchausen applies to --learner=dqn or iqn"),
        ({"munchausen_tau": 0.0}, "--munchausen_tau must be > 0"),
        ({"munchausen_l0": 0.5}, "--munchausen_l0 must be <= 0"),
        ({"noisy_sigma0": 0.0}, "--noisy_sigma0 must be > 0"),
    ],
)
def test_validation_messages(changes, message):
    with pytest.raises(ConfigError, match=message):
        checks.validate(dqnx.Config(**changes))


def test_seeds_over_devices_need_no_divisible_sizes():
    # 2 seeds on 2 devices: whole seeds per device, nothing of a seed is split.
    checks.validate(dqnx.Config(num_seeds=2, num_devices=2, num_envs=3))


def test_per_field_checks_need_no_environment_or_devices():
    """``Config.check_fields`` checks fields alone; the env name is checked by the builder."""
    config = dqnx.Config(env_name="NoSuchEnv-v0")
    assert config.check_fields() is config
    with pytest.raises(ConfigError, match="--env_name=NoSuchEnv-v0: unknown gymnax environment"):
        checks.validate(config)


def test_result_neutral_fields_are_marked_on_the_fields():
    neutral = dqnx.Config.result_neutral_fields()
    assert {"workdir", "total_steps", "num_devices", "eval_every", "seed_group_size"} <= neutral
    assert not {"learning_rate", "gamma", "seed", "num_seeds", "env_name"} & neutral
    assert "total_steps" not in dqnx.Config.result_neutral_fields(anneal_lr=True)
    config = dqnx.Config()
    saved = config.replace(gamma=0.5, eval_every=7).to_dict()
    assert config.drift(saved) == ["gamma"]


@pytest.mark.parametrize("suffix", ["_minatar", "_minatar_rainbow_full"])
def test_minatar_flagfiles_differ_only_in_the_game(suffix):
    # The five games' flagfiles are twins by design (the MinAtar table compares learners,
    # not per-game tuning): a setting changed in one and not the others would show up here.
    # (They are not one shared file plus per-game overrides because absl resolves a nested
    # --flagfile= against the working directory, not against the file that names it.)
    games = ["asterix", "breakout", "freeway", "seaquest", "space_invaders"]
    configs = {g: parse(f"--flagfile={CONFIGS[0].parent / f'{g}{suffix}.flags'}") for g in games}
    assert {c.env_name for c in configs.values()} == {
        "Asterix-MinAtar",
        "Breakout-MinAtar",
        "Freeway-MinAtar",
        "Seaquest-MinAtar",
        "SpaceInvaders-MinAtar",
    }
    base = configs["breakout"].replace(env_name="")
    for game, c in configs.items():
        assert c.replace(env_name="") == base, game


def test_help_names_every_network_and_a_missing_flagfile_is_one_line(tmp_path):
    import subprocess

    run = [sys.executable, str(ROOT / "experiments" / "run.py")]
    r = subprocess.run([*run, "--help"], capture_output=True, text=True)
    line = " ".join(r.stdout.split("--network:")[1].split("(default")[0].split())
    for name in ("mlp", "minatar_cnn", "nature_cnn", "impala_cnn", "auto"):
        assert f'"{name}"' in line, line
    r = subprocess.run([*run, f"--flagfile={tmp_path / 'nope.flags'}"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: cannot read --flagfile: No such file or directory: '{tmp_path / 'nope.flags'}'"
    ]
