"""`--executor dask`: the stage graph on a Dask cluster.

The client walks the graph as the local executor does: a stage is ready when its upstream
stages are done; its cache key is computed from their outputs, and a stage the store already
holds is a hit. Every other ready stage becomes one Dask task whose key *is* its cache key, so
two clients asking one scheduler for the same graph share each stage's task and it runs once.
A task carries only names, digests and small entries (StageJob); a worker reads and writes the
bytes in the store itself, and runs the stage through the very code the local executor runs
(Executor.execute: the store's lock for that key, the same sandbox). A worker that dies
mid-stage: the scheduler gives the task to another worker (the sandbox dies with its worker,
the store sweeps the work directory); a stage that fails raises the same error as locally,
re-raised by the client (exit 4, the same log excerpt).

Workers need the recipes at the path the client names, their environments and fetched
inputs, and a store: the client's directory shared, or their own behind a shared OCI store
(oci.py); docs/cluster.md.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlos_repro.digest import canonical_json, sha256_bytes
from mlos_repro.errors import BadInputError, HostFeatureMissing, MlosReproError, StageFailedError
from mlos_repro.executor import BuildResult, Event, Executor, StageResult
from mlos_repro.graph import cache_key, select
from mlos_repro.oci import SharedConfig, SharedStore
from mlos_repro.recipe import RecipeSet, load_recipes
from mlos_repro.recipe.model import InputKind
from mlos_repro.sandbox import Sandbox
from mlos_repro.sandbox.select import sandbox as make_sandbox
from mlos_repro.sandbox.variant import BuildVariant
from mlos_repro.store import StageEntry, Store

SCHEDULER_ENV = "MLOS_REPRO_SCHEDULER"
EVENT_TOPIC = "mlos-repro-stage"
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class StageJob:
    """What a worker is told: small, and the same for every client asking for this stage."""

    recipes_dir: str
    profile: str
    store: str
    sandbox: str
    stage: str
    key: str
    digests: dict[str, str]
    upstream: dict[str, dict[str, Any]]  # each upstream stage input's entry (StageEntry.to_json)
    variant: BuildVariant | None = None
    shared: SharedConfig | None = None  # the OCI store behind the store, with its trust
    use_cache: bool = True  # False: --no-cache, the stage runs even if a store holds it


@dataclass(frozen=True)
class StageOutcome:
    entry: dict[str, Any]
    ran: bool  # False: the store held it when the worker took the stage's lock
    seconds: float
    worker: str = ""


def run_job(job: StageJob) -> StageOutcome:
    """On a worker: run one stage as the local executor would."""
    start = time.monotonic()
    recipes, store = _worker_state(job.recipes_dir, job.profile, job.store)
    shared = _shared(job.shared, job.store) if job.shared is not None else None
    executor = Executor(recipes, store, make_sandbox(job.sandbox), variant=job.variant, shared=shared,
                        use_cache=job.use_cache)
    stage = recipes.stages[job.stage]
    env = executor.env(stage.builder)
    done = BuildResult(profile=recipes.profile)
    for name, upstream in job.upstream.items():
        done.stages[name] = StageResult(name, StageEntry.from_json(upstream), True, 0.0)
    # The worker's own view of the inputs (its checkout, its mirrors, its store), which must
    # be the client's: the same key, or the stage is refused here.
    digests = executor.input_digests(stage, done)
    mine = cache_key(stage, env.digest, recipes.builder.source_date_epoch, digests)
    if mine != job.key:
        differ = sorted(n for n in digests.keys() | job.digests.keys()
                        if digests.get(n) != job.digests.get(n))
        raise BadInputError(f"stage {job.stage!r}: this worker's cache key is {mine}, the client's "
                            f"{job.key}: "
                            + (f"its inputs {', '.join(differ)} differ" if differ else
                               "its recipes or builder environment differ"),
                            "run the workers from the same checkout, builder.lock and fetched inputs as "
                            "the client")
    if job.variant is not None:
        entry, ran = executor._run_stage(stage, env, job.key, digests, done, job.variant), True
    else:
        entry, ran = executor.execute(stage, env, job.key, digests, done)
    outcome = StageOutcome(entry.to_json(), ran, time.monotonic() - start, _worker_name())
    _log_event({"stage": job.stage, "key": job.key, "ran": ran, "varied": job.variant is not None,
                "seconds": round(outcome.seconds, 3), "worker": outcome.worker})
    return outcome


def _log_event(event: dict[str, Any]) -> None:
    """On the scheduler's event log, topic EVENT_TOPIC: which worker ran which stage, and
    whether it ran or found it in the store (`client.get_events(EVENT_TOPIC)`)."""
    try:
        from distributed import get_worker

        get_worker().log_event(EVENT_TOPIC, event)
    except ValueError:  # not on a worker
        pass


@functools.lru_cache(maxsize=8)
def _shared(config: SharedConfig, store: str) -> SharedStore:
    return config.open(_worker_state_store(store))


@functools.lru_cache(maxsize=8)
def _worker_state_store(store: str) -> Store:
    return Store(Path(store))


@functools.lru_cache(maxsize=8)
def _worker_state(recipes_dir: str, profile: str, store: str) -> tuple[RecipeSet, Store]:
    return load_recipes(Path(recipes_dir), profile), _worker_state_store(store)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:
        return ""


# -- the client -------------------------------------------------------------------------


@dataclass
class Connection:
    scheduler: str | None  # None: a LocalCluster of this process
    client: Any
    cluster: Any = None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


_connections: dict[str | None, Connection] = {}


def connect(scheduler: str | None, workers: int | None = None) -> Connection:
    """A client of `scheduler` (tcp://HOST:PORT), or of a LocalCluster with one single-threaded
    worker per core; one per process, closed when it exits."""
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if scheduler in _connections:
        return _connections[scheduler]
    from distributed import Client, LocalCluster

    # Dask's own messages (workers starting, closing) only with -vv.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler is None:
        count = workers or len(os.sched_getaffinity(0))
        # Processes, one thread each: a stage is a sandboxed process tree, and a worker's
        # memory is its stage's; no dashboard (nothing listens beyond the scheduler).
        cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL)
        connection = Connection(None, Client(cluster), cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise BadInputError(f"cannot reach the Dask scheduler {scheduler}: {e}",
                                f"start one (dask scheduler) and its workers, or unset {SCHEDULER_ENV} and "
                                "leave out --scheduler for a cluster on this machine") from None
        connection = Connection(scheduler, client)
    _connections[scheduler] = connection
    if len(_connections) == 1:
        atexit.register(close_all)
    return connection


def close_all() -> None:
    while _connections:
        _, connection = _connections.popitem()
        connection.close()


class DaskExecutor(Executor):
    """The local executor's graph walk, with every stage that runs sent to a Dask worker."""

    def __init__(self, recipes: RecipeSet, store: Store, sandbox: Sandbox, *, scheduler: str | None,
                 **options: Any) -> None:
        super().__init__(recipes, store, sandbox, **options)
        self.scheduler = scheduler
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection:
        """Connected (or the LocalCluster started) when the first stage is to run, not before."""
        if self._connection is None:
            self._connection = connect(self.scheduler)
        return self._connection

    def _job(self, name: str, key: str, digests: dict[str, str], done: BuildResult,
             variant: BuildVariant | None) -> StageJob:
        stage = self.recipes.stages[name]
        upstream = {i.target: done.stages[i.target].entry.to_json()
                    for i in stage.inputs if i.kind is InputKind.STAGE}
        return StageJob(str(self.recipes.recipes_dir.absolute()), self.recipes.profile, str(self.store.root),
                        self.sandbox.name, name, key, digests, upstream, variant,
                        self.shared.config if self.shared is not None else None, self.use_cache)

    def build(self, wanted: Iterable[str] = (),
              on_error: Callable[[str, MlosReproError], None] | None = None) -> BuildResult:
        result = BuildResult(profile=self.recipes.profile)
        order = select(self.recipes.stages, wanted)
        self._check_privileges(order)
        self._check_pinned_inputs(order)
        pending, failed = list(order), set[str]()
        tasks = _Tasks(self)

        def fail(name: str, error: MlosReproError) -> None:
            if on_error is None:
                raise error
            result.stages.pop(name, None)
            failed.add(name)
            on_error(name, error)

        def finish(name: str, res: StageResult) -> None:
            result.stages[name] = res
            result.sboms[name] = self.sboms(name, result, res.entry)

        def launch() -> None:
            """Send (or take from the store) every stage whose upstream stages are done."""
            progressed = True
            while progressed:
                progressed = False
                for name in list(pending):
                    stage = self.recipes.stages[name]
                    if not all(u in result.stages or u in failed for u in stage.upstream):
                        continue
                    pending.remove(name)
                    progressed = True
                    missing = sorted(set(stage.upstream) & failed)
                    if missing:
                        fail(name, StageFailedError(f"stage {name!r} was not built: it needs "
                                                    f"{', '.join(missing)}, which failed"))
                        continue
                    try:
                        self._send(name, result, tasks, finish)
                    except HostFeatureMissing:
                        raise
                    except MlosReproError as e:
                        fail(name, e)

        launch()
        for name, started, task in tasks:
            try:
                outcome: StageOutcome = task.result()
                entry = StageEntry.from_json(outcome.entry)
                if self.shared is not None:
                    self.shared.ensure(entry)  # run on another machine: its blobs, for OUT and SBOMs
                seconds = time.monotonic() - started
                if outcome.ran:
                    self.store.record_seconds(f"running {name}", outcome.seconds)
                    self.progress(Event(name, "done", seconds))
                else:
                    self.progress(Event(name, "cached"))
                finish(name, StageResult(name, entry, not outcome.ran, seconds if outcome.ran else 0.0))
            except HostFeatureMissing:
                raise
            except MlosReproError as e:
                fail(name, e)
            launch()
        # In the graph's order, as the local executor leaves them (the manifest follows it).
        result.stages = {n: result.stages[n] for n in order if n in result.stages}
        result.sboms = {n: result.sboms[n] for n in order if n in result.sboms}
        return result

    def _send(self, name: str, result: BuildResult, tasks: _Tasks,
              finish: Callable[[str, StageResult], None]) -> None:
        stage = self.recipes.stages[name]
        env = self.env(stage.builder)
        result.environments[env.name] = f"sha256:{env.digest}"
        key, digests, hit = self.looked_up(stage, env, result)
        if hit is not None:
            finish(name, StageResult(name, hit, True, 0.0))
            return
        state = "running" if self.variant is None else "varied"
        self.progress(Event(name, state, estimate=self.store.last_seconds(f"{state} {name}")))
        task_key = key if self.variant is None else f"{key}-varied-{_variant_digest(self.variant)}"
        tasks.send(name, self._job(name, key, digests, result, self.variant), task_key)

    def rebuild_varied(self, control: BuildResult, variant: BuildVariant,
                       on_error: Callable[[str, MlosReproError], None], *,
                       only: Iterable[str] | None = None, why: str = "") -> dict[str, StageEntry]:
        """As the local executor's, every stage at once: each takes the control build's inputs."""
        varied: dict[str, StageEntry] = {}
        tasks = _Tasks(self)
        labels: dict[str, str] = {}
        for name in control.stages if only is None else only:
            _, _, key, digests, labels[name] = self.varied_stage(name, control, why)
            tasks.send(name, self._job(name, key, digests, control, variant),
                       f"{key}-varied-{_variant_digest(variant)}")
        for name, started, task in tasks:
            try:
                outcome: StageOutcome = task.result()
            except HostFeatureMissing:
                raise
            except MlosReproError as e:
                on_error(name, e)
                continue
            varied[name] = StageEntry.from_json(outcome.entry)
            self.store.record_seconds(f"varied {name}", outcome.seconds)
            self.progress(Event(labels[name], "done", time.monotonic() - started))
        return {n: varied[n] for n in labels if n in varied}


class _Tasks:
    """The stages sent to the cluster, yielded as they finish (distributed.as_completed, made
    with the first one sent: a build whose every stage is in the store starts no cluster)."""

    def __init__(self, executor: DaskExecutor) -> None:
        self.executor = executor
        self.queue: Any = None
        self.running: dict[str, tuple[str, float]] = {}  # task key -> stage, when it was sent

    def send(self, name: str, job: StageJob, key: str) -> None:
        client = self.executor.connection.client
        future = client.submit(run_job, job, key=key, pure=False)
        if self.queue is None:
            from distributed import as_completed

            self.queue = as_completed(loop=client.loop)
        self.running[future.key] = (name, time.monotonic())
        self.queue.add(future)

    def __iter__(self) -> Iterator[tuple[str, float, Any]]:
        if self.queue is None:
            return
        for future in self.queue:
            name, started = self.running.pop(future.key)
            yield name, started, future


def _variant_digest(variant: BuildVariant) -> str:
    return sha256_bytes(canonical_json(asdict(variant)))[:16]


def executor_for(kind: str, scheduler: str | None, recipes: RecipeSet, store: Store, sandbox: Sandbox,
                 **options: Any) -> Executor:
    """The local executor, or the Dask one (a LocalCluster unless a scheduler is named)."""
    if kind == "local":
        if scheduler:
            raise BadInputError(f"--scheduler {scheduler} is for --executor dask",
                                "add --executor dask, or leave out --scheduler")
        return Executor(recipes, store, sandbox, **options)
    if kind != "dask":
        raise BadInputError(f"--executor {kind}: unknown", f"use one of {', '.join(EXECUTORS)}")
    return DaskExecutor(recipes, store, sandbox, scheduler=scheduler, **options)
