"""Two simulated CPU devices for every test, and one persistent compilation cache for
the whole test session (both set before JAX starts)."""

import os
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
