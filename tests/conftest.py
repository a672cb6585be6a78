"""Two simulated CPU devices for every test, and one persistent compilation cache for
the whole test session (both set before JAX starts)."""

import os
import re
import shutil
import tempfile

from jax_cache import compilation_cache_env

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()

# One cache for the session: set here in the first pytest process, it is inherited by
# the pytest-xdist workers and by every JAX subprocess a test starts, so a program one
# of them compiled is loaded, not compiled again, by the others. (A module that gives
# its subprocesses a cache of their own keeps it; a cache the caller set is used as it
# is.) Removed when the session ends.
_OWNED = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWNED = tempfile.mkdtemp(prefix="dqnx-tests-jax-cache-")
    os.environ.update(compilation_cache_env(_OWNED))


def pytest_sessionfinish(session):
    if _OWNED:  # only the process that made it: the controller, after its workers
        shutil.rmtree(_OWNED, ignore_errors=True)


# The slow tier: `pytest -m "not slow"` leaves these out (the edit-test loop; see the
# Development page of the docs). Whole files, or `file::test-name` where `*` matches
# anything and a name matches from its start (so a test's parametrized cases follow it).
# Listed here, not as decorators in each file, so the list is one place to read and to
# tune: `pytest --durations=30` shows what to add. Each module keeps fast tests of its
# own in the fast tier.
SLOW = (
    "test_ray_fleet.py",  # Ray clusters on 127.0.0.1, actor processes killed
    "test_host_multiprocess.py",  # several jax.distributed processes
    "test_host_determinism.py",  # whole host runs twice, with injected delays
    "test_device_check.py",  # the prepared device check at smoke sizes
    "test_bench.py",
    "test_bench_replay.py",
    # Several processes, signals, kill -9, the command line end to end.
    "test_parallel.py::test_two_processes",
    "test_parallel.py::test_a_sweep_spreads",
    "test_parallel.py::test_four_device_update_equals_one_device_update",
    "test_checkpoint.py::test_signal_saves_then_exits",
    "test_checkpoint.py::test_kill_9",
    "test_checkpoint.py::test_resume_is_bit_exact_and_drift_is_an_error",
    "test_checkpoint_fallback.py::test_host_actor_run_falls_back",
    "test_launch.py::test_spot_run",
    "test_launch.py::test_gpu_run_trains",
    "test_launch.py::test_run_without_spot",
    # Whole training runs and the learners' full compositions.
    "test_train.py::test_cartpole_learns",
    "test_train.py::test_cli_end_to_end",
    "test_train.py::test_rainbow_full_composes",
    "test_train.py::test_learner_options_train",
    "test_train.py::test_seed_groups_match_all_seeds_at_once",
    "test_train.py::test_apex_rainbow_options_compose",
    "test_train.py::test_run_is_deterministic_and_writes_contract_files",
    "test_host_actors.py::test_host_mode_resumes_after_kill",
    "test_host_actors.py::test_atari_frame_replay_run",
    "test_host_actors.py::test_distributional_noisy_munchausen_learner",
    "test_host_actors.py::test_host_mode_writes_the_contract_files",
    "test_sweep.py::test_a_sweep_run_is_the_run_alone",  # these three share one sweep
    "test_sweep.py::test_sweep_outputs",
    "test_sweep.py::test_plot_draws_the_sensitivity",
    "test_sweep.py::test_priority_exponent_munchausen_tau_and_kappa_trace",
    "test_sweep.py::test_each_run_carries_the_command",  # the shared sweep, then the CLI
    "test_envs.py::test_every_discrete_env_steps[*-MinAtar]",
    "test_frame_replay.py::test_vmap_over_seeds_matches_single_seed_runs",
    "test_render.py::test_gif_of_one_greedy_episode",
    "test_docs.py::test_custom_network_example",
    "test_research_example.py::test_the_example_runs",
    "test_env_suites.py::test_craftax",
    "test_env_suites.py::test_masked_training_stores",
)
_SLOW = [re.compile(re.escape(s if "::" in s else s + "::").replace(r"\*", ".*")) for s in SLOW]


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        name = f"{item.path.name}::{item.name}"
        if any(pattern.match(name) for pattern in _SLOW):
            item.add_marker(pytest.mark.slow)
