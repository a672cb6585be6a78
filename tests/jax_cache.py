"""A persistent compilation cache for JAX processes: the test session's (conftest.py)
or one of a test module's own for the subprocesses it starts."""


def compilation_cache_env(directory) -> dict[str, str]:
    """Environment variables that make a JAX process read and write the persistent
    compilation cache in ``directory``, every program kept however small or quick to
    compile: the module's later subprocesses load what the first compiled. (A process
    whose JAX is already imported does not read them.)"""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(directory),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
