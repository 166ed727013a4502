"""One way to get a Ray cluster for lowbit's distributed commands (`regress`, `cosim --ray`,
`bench fpga --ray`): attach to a running one, or start a local instance and stop it after."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def ray_session(address: str | None, cpus: int | None = None):
    """Inside the block Ray is initialised: at ``address`` (``ray://HOST:10001`` or
    ``HOST:6379``), else a local instance with ``cpus`` CPUs (None: all). A session this
    function started is shut down on exit; one that was already running is left alone."""
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
