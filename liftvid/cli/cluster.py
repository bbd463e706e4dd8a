"""``liftvid cluster``: a local Dask cluster for ``extract --scheduler``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .render import console, fail, plural, reports_errors


@reports_errors
def cluster(
    workers: Annotated[Optional[int], typer.Option(help="CPU workers to start when there is no GPU (or with --cpu).", min=1)] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="CPU workers even when GPUs are visible.")] = False,
    host: Annotated[str, typer.Option(help="Address the scheduler listens on (0.0.0.0 for other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Scheduler port (0: any free port).", min=0)] = 8786,
    dashboard: Annotated[str, typer.Option(help="Dashboard address ('' for none).")] = ":8787",
) -> None:
    """Start a local Dask cluster for `extract --scheduler` (one worker per GPU, or N CPU workers).

    Each GPU worker offers the resource GPU=1. Prints the scheduler address and runs until Ctrl-C.
    """
    import signal
    import time

    from ..jobs import start_local_cluster, visible_gpus

    out = console()
    gpus = 0 if cpu else visible_gpus()
    # worker processes start with SIGINT ignored (kept across exec): Ctrl-C reaches the whole process
    # group, and only this process should act on it, closing the workers in order
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        local = start_local_cluster(workers=workers, gpus=gpus, host=host, port=port,
                                    dashboard=dashboard or None)
    except (OSError, ValueError) as exc:  # a port in use, a bad address: say which
        fail(f"cannot start the cluster on {host}:{port}: {exc}")
    finally:
        signal.signal(signal.SIGINT, handler)
    address = local.scheduler_address
    kind = f"{plural(gpus, 'GPU worker')} (GPU=1 each)" if gpus else plural(workers or 1, "CPU worker")
    out.print(f"scheduler {address}")
    out.print(f"{kind}; dashboard {local.dashboard_link if dashboard else 'off'}")
    out.print(f"use: liftvid extract VIDEOS STORE --scheduler {address}   (Ctrl-C stops the cluster)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        out.print("stopping the cluster")
    finally:
        local.close()
