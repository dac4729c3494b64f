"""Worker processes of a distributed search: `latprune search --workers N` starts N - 1 of them on this machine,
`latprune search-worker --run DIR` joins from anywhere the run folder (and the trial storage) can be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from latprune._io import read_json
from latprune.errors import SearchError

#: How long a worker started beside its search waits for the search to write its run record.
_RECORD_WAIT_S = 900.0


def spawn_workers(n: int, run_dir: Path, storage: str) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` worker processes for the search in ``run_dir`` (one torch thread each; logs in
    ``run_dir/workers/``). They exit when the search closes the queue, or when this process dies."""
    logs = run_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(n):
        cmd = [
            sys.executable, "-m", "latprune.cli", "search-worker", "--run", str(run_dir), "--storage", storage,
            "--parent-pid", str(os.getpid()), "--name", f"worker{i + 1}",
        ]  # fmt: skip
        with open(logs / f"worker{i + 1}.log", "ab") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """Wait for the workers this process started to leave a closed queue; terminate those that do not."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait(timeout=10)


def serve_search(
    run_dir: str | Path,
    storage: str | None = None,
    *,
    name: str | None = None,
    parent_pid: int | None = None,
    idle_timeout_s: float = 1800.0,
    device: str = "cpu",
) -> int:
    """Join the search in ``run_dir``: rebuild its super-net estimator from the run record (same parent, space,
    data subsets, BN images and seed), then score its trials until it ends. Returns how many this process scored."""
    import torch

    from latprune.data import DataConfig, load_splits
    from latprune.search import SearchConfig
    from latprune.search.trials import TrialQueue, default_storage, serve
    from latprune.space import SearchSpace
    from latprune.supernet import SupernetConfig, SupernetData, SupernetEstimator
    from latprune.supernet._shared import ScoringWorker
    from latprune.train import load_model_from_checkpoint

    run_dir = Path(run_dir)
    record = _wait_for_record(run_dir / "search.json", parent_pid)
    if record is None:
        return 0
    meta, config = record["meta"], SearchConfig.from_dict(record["config"])
    if "checkpoint" not in meta or "space" not in record:
        raise SearchError(f"'{run_dir}' is not the run folder of a checkpoint search; point --run at one.")
    torch.set_num_threads(1)  # one process per core: workers scale by processes, not threads
    parent, _ = load_model_from_checkpoint(meta["checkpoint"])
    splits = load_splits(DataConfig(**meta["data"]))
    estimator = SupernetEstimator(
        parent,
        SearchSpace.from_dict(record["space"]),
        SupernetData(splits.train, splits.val, splits.info),
        SupernetConfig.from_dict(meta["supernet"]),
        config.seed,
        device=device,
        progress=False,
    )
    queue = TrialQueue(storage or meta.get("storage") or default_storage(run_dir), worker=name)
    print(f"search-worker {queue.worker}: serving {run_dir} through {queue.url}", flush=True)
    scored = serve(
        queue, ScoringWorker(estimator, run_dir / "supernet"), idle_timeout_s=idle_timeout_s, parent_pid=parent_pid
    )
    print(f"search-worker {queue.worker}: scored {scored} candidates", flush=True)
    return scored


def _wait_for_record(path: Path, parent_pid: int | None) -> dict | None:
    """The search's run record; a worker started beside a new search waits for the search to write it."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while not path.exists():
        if parent_pid is not None and os.getppid() != parent_pid:
            return None  # the search died before it started
        if parent_pid is None or time.monotonic() > deadline:
            raise SearchError(f"'{path}' does not exist; start the search first, then its workers.")
        time.sleep(0.5)
    return read_json(path, what="search record")
