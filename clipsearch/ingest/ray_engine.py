"""The Ray engine: a sync's decode and encode stages on a Ray cluster, its commits on this machine.

The sync around it is the local one (:func:`clipsearch.ingest.sync.sync`): this machine (the
driver) scans the folders with ``stat`` and plans against the catalog, and sweeps what disappeared
at the end. Only the to-do files go to the cluster, as a Ray Data pipeline (the pattern Ray
documents for embedding jobs)::

    to-do files (path, size, mtime; blocks of ``files_per_task``)
      -> prepare_files: read, hash, decode, preprocess, side views   (tasks, 1 CPU each, any node)
      -> EncodeFiles: pixels -> vectors                               (actors, one model copy each)
      -> this machine: committed in batches as they stream back      (importer.import_batch)

The exchange of hashes: before the run the driver puts the 64-bit keys of every content hash the
index holds into Ray's object store (8 bytes a content: 80 MB for 10 million); each worker fetches
them once and, for a file whose hash is among them (a renamed or copied file), sends back the hash
alone, without decoding it. The driver checks the whole hash against the catalog; a file whose key
matched another content's (about one in 10^5 for 10 million contents against 10 million new
files) is sent again with an empty set. Copies of one new content met in the same run are encoded
more than once and committed once (the committer keeps the first).

Results stream back and are committed as they come (``commit_vectors`` new vectors, 512 by
default, or ``commit_every`` files per transaction, or what came back in ``commit_seconds``): the
driver holds a few batches, whatever the archive's size. A killed driver loses only what it had
not committed; the next sync (on Ray or not) resumes from the catalog. Workers never touch the
index.

Failures: a decoding task is retried ``retries`` times when its worker or node dies (Ray's task
retries, lineage reconstruction for the blocks lost with a node); an encoder actor is restarted
``retries`` times, on another node if its own is gone, and its calls are retried as long as it can
be restarted (an actor's calls must retry without a limit: Ray spends their retries within
milliseconds while it has not yet noticed that a node is gone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.encoders.video import is_video_name
from clipsearch.errors import ClusterError, RayMissingError
from clipsearch.ingest.importer import ImportItem, SkippedItem, import_batch
from clipsearch.ingest.ray_workers import (
    STALE_PREVIEW,
    EncodeFiles,
    known_keys,
    node_label,
    prepare_files,
    probe_node,
)
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.sync import LocalEngine, StalePreview, SyncReport, Work, decode_job

if TYPE_CHECKING:
    from clipsearch.encoders.facts import ModelFacts, ModelPreview
    from clipsearch.encoders.spec import ModelSpec
    from clipsearch.ingest.decode import DecodeJob


@dataclass(frozen=True)
class RayOptions:
    """How a sync runs on Ray (beside :class:`~clipsearch.ingest.sync.SyncOptions`, which still apply).

    Args:
        address: the cluster: None starts a Ray on this machine for the run (stopped after it);
            ``"auto"`` joins the running cluster that ``ray.init`` finds (``RAY_ADDRESS``, else the
            one last started on this machine); ``"host:port"`` a cluster's head; ``"ray://..."``
            Ray Client. If this process is connected to Ray already, that connection is used.
        num_cpus: CPUs of a Ray started for the run (None: every core).
        actors: model copies encoding at once (None: one per GPU where the cluster has GPUs, else
            one per node).
        gpus_per_actor: GPUs each model copy takes (None: 1 where the cluster has GPUs, else none).
        files_per_task: most files a decoding task reads (a Ray Data block); fewer when there are
            too few files to give every CPU of the cluster two tasks.
        retries: times a decoding task is retried and an encoder restarted after its worker or
            node is lost.
        check_timeout: seconds every node has to answer the check made before any work.
        report_every: seconds between progress notes (files/s per node, time left).
        commit_vectors: new vectors the driver commits at once (at least the sync's
            ``batch_size``): a transaction costs ~5 ms whatever it holds, so the driver's commit
            rate, the limit of a large cluster, doubles from batches of 32 to 512 (see
            benchmarks/ray_ingest.py). Fewer are committed after ``commit_seconds``.
        commit_seconds: results are committed, however few, with the first batch that comes
            back this long after the last commit (what a killed driver can lose when results
            come slowly).
    """

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    files_per_task: int = 16
    retries: int = 3
    check_timeout: float = 120.0
    report_every: float = 15.0
    commit_vectors: int = 512
    commit_seconds: float = 1.0


def import_ray() -> Any:
    """The ``ray`` module, with Ray Data.

    Raises:
        RayMissingError: Ray (or Ray Data) is not installed.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayMissingError() from None
    return ray


@dataclass(frozen=True)
class _Cluster:
    nodes: dict[str, str]  # node id -> label, alive nodes with CPUs or GPUs
    cpus: int
    gpus: int


class RayEngine:
    """Runs a sync's decode and encode stages on Ray (see the module doc); an
    :class:`~clipsearch.ingest.sync.Engine`.

    Args:
        options: the cluster and how to use it.
        spec: the index's model, which every actor loads on its own machine.
        precision: the precision to run it at (``auto`` is resolved by each machine).
    """

    def __init__(self, options: RayOptions, spec: ModelSpec, precision: str) -> None:
        self.options = options
        self.spec = spec
        self.precision = precision

    def run(self, work: Work) -> None:
        """Photos go to the cluster; videos, whose windows the local engine decodes as their moments
        grow, are indexed on this machine after them.

        Raises:
            RayMissingError: Ray is not installed.
            ClusterError: no cluster at the address, a node cannot read the files or load the
                model, work lost beyond its retries. What was committed before is kept.
        """
        videos = [item for item in work.todo if is_video_name(item[0].path)]
        photos = [item for item in work.todo if not is_video_name(item[0].path)]
        if photos:
            self._on_ray(replace(work, todo=photos))
        if videos:
            _videos_here(replace(work, todo=videos))

    def _on_ray(self, work: Work) -> None:
        ray = import_ray()
        started = self._connect(ray, work)
        try:
            cluster = _cluster(ray)
            if not (started and self.options.address is None):  # a Ray of this machine sees its files
                self._check_nodes(ray, cluster, work)
            elif work.progress:
                work.progress.note(self._summary(cluster))
            keys = ray.put(known_keys(work.folder.catalog.content_hashes()))
            unchanged = work.report.unchanged
            try:
                self._run(ray, cluster, work, keys, cached=True)
            except StalePreview:  # nothing was committed: decode again with the model's own
                report = work.report
                report.added = report.updated = report.reused = report.skipped = 0
                report.skip_reasons.clear()
                report.nodes.clear()
                report.unchanged = unchanged
                self._run(ray, cluster, work, keys, cached=False)
        finally:
            if started:
                with contextlib.suppress(Exception):
                    ray.shutdown()

    # -- the cluster ------------------------------------------------------------------------

    def _connect(self, ray: Any, work: Work) -> bool:
        """Connect to (or start) Ray; whether this run started it (and so stops it)."""
        # Ray Data's INFO lines (and its warning that its progress bars are off) would cross ours
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        started = not ray.is_initialized()
        if started:
            self._start(ray, work)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = False  # commit whatever comes back first
        return started

    def _start(self, ray: Any, work: Work) -> None:
        address = self.options.address
        if work.progress:
            work.progress.note(
                "Starting Ray on this machine ..." if address is None else f"Joining Ray at {address} ..."
            )
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address is None:
                ray.init(address="local", num_cpus=self.options.num_cpus, include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "on this machine" if address is None else f"at {address}"
            raise ClusterError(f"Ray could not be started or reached {where}: {exc}") from None

    def _check_nodes(self, ray: Any, cluster: _Cluster, work: Work) -> None:
        """Every node must see the run's folders, and a few of its files as this machine sees them.

        Raises:
            ClusterError: naming a node and a path it cannot read, or the nodes that did not answer.
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        roots = sorted({root for root, _ in work.limits})
        step = max(1, len(work.todo) // 8)
        samples = [sample for r, _ in work.todo[::step][:8] if (sample := _seen_here(r.path))]
        probe = ray.remote(probe_node)
        pending = {
            probe.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(roots, samples): label
            for node_id, label in cluster.nodes.items()
        }
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=self.options.check_timeout)
        if late:
            names = ", ".join(pending[ref] for ref in late)
            raise ClusterError(
                f"The Ray node(s) {names} did not answer within {self.options.check_timeout:.0f} s "
                "(busy, or hanging on an unreachable file system?); nothing was indexed.",
                node=pending[late[0]],
            )
        for ref in ready:
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise ClusterError(
                    f"The Ray node {pending[ref]} could not run clipsearch (is it installed there, in the "
                    f"same version?): {_reason(exc)}",
                    node=pending[ref],
                ) from None
            if answer["problems"]:
                path, problem = answer["problems"][0]
                raise ClusterError(
                    f"The Ray node {answer['node']} cannot read {path}: {problem}. The photos must be at "
                    "the same path on every machine of the cluster (a shared file system); nothing was "
                    "indexed.",
                    node=answer["node"],
                    path=path,
                )
        if work.progress:
            work.progress.note(self._summary(cluster))

    def _summary(self, cluster: _Cluster) -> str:
        actors = self._actors(cluster)
        return (
            f"Ray: {len(cluster.nodes)} node(s), {cluster.cpus} CPU(s), {cluster.gpus} GPU(s); "
            f"{actors} model cop{'y' if actors == 1 else 'ies'}."
        )

    def _gpus_per_actor(self, cluster: _Cluster) -> float:
        if self.options.gpus_per_actor is not None:
            return self.options.gpus_per_actor
        return 1.0 if cluster.gpus else 0.0

    def _actors(self, cluster: _Cluster) -> int:
        if self.options.actors is not None:
            return self.options.actors
        gpus = self._gpus_per_actor(cluster)
        return max(1, int(cluster.gpus // gpus) if gpus else len(cluster.nodes))

    # -- the run ----------------------------------------------------------------------------

    def _run(self, ray: Any, cluster: _Cluster, work: Work, keys: Any, *, cached: bool) -> None:
        """One pass over the to-do files, with the model's cached preview or its own facts."""
        model = work.model
        preview = model.preview() if cached else None
        known: ModelFacts | ModelPreview
        if preview is not None:
            known = expected = preview
        else:
            from clipsearch.encoders.facts import ModelPreview

            if work.progress and not model.in_memory:
                work.progress.note(f"Reading the model {model.label} here for its preprocessing ...")
            known = model.facts()
            expected = ModelPreview.of(known)
        job = decode_job(work.folder, known, work.limits)
        commits = _Commits(work, self.options)
        meter = _Meter(work, self.options.report_every)
        try:
            redo = self._stream(ray, cluster, work, job, expected, work.todo, keys, commits, meter)
            if redo:  # files whose hash matched another content's key: decoded this time
                meter.total += len(redo)
                empty = ray.put(np.zeros(0, dtype=np.uint64))
                self._stream(ray, cluster, work, job, expected, redo, empty, commits, meter)
            commits.flush()
        except KeyboardInterrupt:
            commits.flush()  # what came back is complete: keep it
            raise
        except (ray.exceptions.RayError, ray.data.exceptions.SystemException) as exc:
            commits.flush()
            raise ClusterError(
                f"The run on Ray failed: {_reason(exc)}. The batches committed before are kept; "
                "sync again to resume."
            ) from None
        finally:
            meter.finish()
        if preview is not None:
            model.confirmed(preview)

    def _stream(
        self,
        ray: Any,
        cluster: _Cluster,
        work: Work,
        job: DecodeJob,
        expected: ModelPreview | None,
        todo: list[tuple[FileRecord, Any]],
        keys: Any,
        commits: _Commits,
        meter: _Meter,
    ) -> list[tuple[FileRecord, None]]:
        """Run ``todo`` through the pipeline and commit what comes back; the files to send again."""
        dataset = self._dataset(ray, cluster, work, job, expected, todo, keys)
        redo: list[tuple[FileRecord, None]] = []
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            problems = [p for p in batch["problem"] if p]
            if problems:
                self._stop(work, batch, problems[0], expected)
            redo += commits.take(batch)
            meter.advance(batch)
        return redo

    def _stop(self, work: Work, batch: dict[str, Any], problem: str, expected: ModelPreview | None) -> None:
        """An encoder's problem ends the run (before anything it touched is committed)."""
        node = str(next(n for n, p in zip(batch["encoder_node"], batch["problem"], strict=True) if p))
        if problem == STALE_PREVIEW:
            if expected is not None and not work.model.confirm(expected):
                raise StalePreview  # this machine's preview was wrong: nothing was committed
            problem = (
                f"its copy of {self.spec.label()} is not the one here (other weights or preprocessing); "
                "give every machine the same weights file"
            )
        raise ClusterError(f"The Ray node {node}: {problem}.", node=node)

    def _dataset(
        self,
        ray: Any,
        cluster: _Cluster,
        work: Work,
        job: DecodeJob,
        expected: ModelPreview | None,
        todo: list[tuple[FileRecord, Any]],
        keys: Any,
    ) -> Any:
        """The Ray Data pipeline over ``todo`` (lazy: it runs as its results are read)."""
        import pyarrow as pa

        step = max(1, min(self.options.files_per_task, -(-len(todo) // (2 * max(1, cluster.cpus)))))
        blocks = [
            pa.table(
                {
                    "path": pa.array([os.fsencode(r.path) for r, _ in todo[i : i + step]], pa.binary()),
                    "size": pa.array([r.size for r, _ in todo[i : i + step]], pa.int64()),
                    "mtime_ns": pa.array([r.mtime_ns for r, _ in todo[i : i + step]], pa.int64()),
                }
            )
            for i in range(0, len(todo), step)
        ]
        gpus = self._gpus_per_actor(cluster)
        retries = self.options.retries
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing retries this way (removal announced for 2.64, which
            # pyproject excludes), and offers no other way to set them
            warnings.filterwarnings("ignore", message=".*ray_remote_args", category=DeprecationWarning)
            dataset = ray.data.from_arrow(blocks).map_batches(
                prepare_files,
                batch_size=None,  # a block: files_per_task files
                batch_format="numpy",
                fn_kwargs={"job": job, "known": keys},
                num_cpus=1,
                max_retries=retries,
            )
            return dataset.map_batches(
                EncodeFiles,
                fn_constructor_kwargs={
                    "spec": self.spec,
                    "precision": self.precision,
                    "weights_sha256": work.folder.meta.weights_sha256,
                    "preview": expected,
                    "batch_size": work.options.batch_size,
                    "device": "cuda" if gpus else "cpu",
                },
                batch_size=work.options.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self._actors(cluster)),
                # encoders sleep while they wait: they share the cores with the decoding tasks,
                # as the local engine's encoder shares them with its decoding processes
                num_cpus=0,
                num_gpus=gpus or None,
                max_restarts=retries,
                max_task_retries=-1,
                scheduling_strategy="SPREAD",
            )


def _videos_here(work: Work) -> None:
    """Index the run's videos with the local engine, counted into ``work.report``."""
    if work.progress:
        n = len(work.todo)
        work.progress.note(
            f"Indexing {n} video{'' if n == 1 else 's'} on this machine (Ray takes photos) ..."
        )
    report = work.report
    # a report of their own: the local engine starts its counts again if its preview was stale
    part = SyncReport(index=report.index, rebuild=report.rebuild)
    try:
        LocalEngine().run(replace(work, report=part))
    finally:
        for name in _VIDEO_COUNTS:
            setattr(report, name, getattr(report, name) + getattr(part, name))
        for reason, count in part.skip_reasons.items():
            report.skip_reasons[reason] = report.skip_reasons.get(reason, 0) + count


_VIDEO_COUNTS = ("added", "updated", "reused", "skipped", "videos", "video_samples", "moments",
                 "video_seconds", "video_decode_seconds", "video_encode_seconds")  # fmt: skip


def _cluster(ray: Any) -> _Cluster:
    nodes: dict[str, str] = {}
    cpus = gpus = 0
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or not (resources.get("CPU") or resources.get("GPU")):
            continue
        nodes[node["NodeID"]] = node_label(node.get("NodeManagerHostname", "?"), node["NodeID"])
        cpus += int(resources.get("CPU", 0))
        gpus += int(resources.get("GPU", 0))
    if not nodes:
        raise ClusterError("The Ray cluster has no live node with CPUs or GPUs to work on.")
    return _Cluster(nodes, cpus, gpus)


def _seen_here(path: str) -> tuple[bytes, int, int] | None:
    """A file as this machine sees it now (path, size, mtime_ns) for the nodes to compare; None if
    it is gone: one deleted or changed since the plan is so for every node, not a node's fault."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.fsencode(path), st.st_size, st.st_mtime_ns


def _reason(exc: BaseException) -> str:
    """What went wrong, in a line: the error a Ray task raised rather than Ray's wrapping of it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


class _Commits:
    """Turns result batches into import items and commits them: a transaction per
    ``commit_vectors`` new vectors (at least ``batch_size``) or ``commit_every`` files, or what
    came back in ``commit_seconds``."""

    def __init__(self, work: Work, options: RayOptions) -> None:
        self.work = work
        self.most_vectors = max(work.options.batch_size, options.commit_vectors)
        self.wait = options.commit_seconds
        self.last = time.monotonic()
        self.catalog = work.folder.catalog
        self.roots = self.catalog.roots()
        self.items: list[ImportItem | SkippedItem] = []
        self.new: set[str] = set()  # hashes the pending items bring
        self.vectors = 0  # the pending items' new vectors
        self.since_checkpoint = 0

    def take(self, batch: dict[str, Any]) -> list[tuple[FileRecord, None]]:
        """Queue a result batch (committing when enough is pending); the files to send again."""
        redo: list[tuple[FileRecord, None]] = []
        for i in range(len(batch["path"])):
            record = FileRecord(
                os.fsdecode(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i])
            )
            digest = str(batch["digest"][i])
            if batch["reason"][i]:
                self.items.append(SkippedItem(record, str(batch["reason"][i]), str(batch["detail"][i])))
            elif batch["known"][i]:
                if digest not in self.new and self.catalog.content_id(digest) is None:
                    redo.append((record, None))  # its key matched another content's
                else:
                    self.items.append(ImportItem(record, digest, None, 0, 0))
            else:
                vectors = batch["vectors"][i]
                kinds = str(batch["views"][i]).split(",") if batch["views"][i] else []
                taken = float(batch["taken"][i])
                views = tuple(zip(kinds, vectors[1:], strict=True))
                item = ImportItem(
                    record, digest, vectors[0], int(batch["width"][i]), int(batch["height"][i]),
                    None if np.isnan(taken) else taken, views,
                )  # fmt: skip
                self.items.append(item)
                if digest not in self.new:
                    self.new.add(digest)
                    self.vectors += len(vectors)
            if self.vectors >= self.most_vectors or len(self.items) >= self.work.options.commit_every:
                self.flush()
        if self.items and time.monotonic() - self.last >= self.wait:
            self.flush()
        return redo

    def flush(self) -> None:
        if not self.items:
            return
        # a sync's batches: through the pending log, written out as a segment at each checkpoint
        import_batch(self.work.folder, self.items, self.roots, self.work.report, direct=False)
        self.since_checkpoint += self.vectors
        self.items, self.new, self.vectors = [], set(), 0
        self.last = time.monotonic()
        if self.since_checkpoint >= self.work.options.checkpoint_every:
            self.work.folder.checkpoint()
            self.since_checkpoint = 0


class _Meter:
    """Progress: the bar (files), and every ``every`` seconds a note with files/s, files/s per
    node and the time left; each node's files read and vectors encoded go into the report."""

    def __init__(self, work: Work, every: float) -> None:
        self.work = work
        self.progress = work.progress
        self.every = every
        self.total = len(work.todo)
        self.done = 0
        self.read: Counter[str] = Counter()
        self.encoded: Counter[str] = Counter()
        self.started = self.last = time.monotonic()
        if self.progress:
            self.progress.start(self.total)

    def advance(self, batch: dict[str, Any]) -> None:
        n = len(batch["path"])
        self.done += n
        self.read.update(str(node) for node in batch["node"])
        for node, vectors in zip(batch["encoder_node"], batch["vectors"], strict=True):
            self.encoded[str(node)] += len(vectors)
        if self.progress:
            self.progress.advance(n)
            now = time.monotonic()
            if now - self.last >= self.every and self.done < self.total:
                self.last = now
                self.progress.note(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else float("inf")
        nodes = ", ".join(f"{node} {count / elapsed:.1f}" for node, count in sorted(self.read.items()))
        eta = f"{left / 60:.0f} min" if left >= 120 else f"{left:.0f} s"
        return (
            f"{self.done}/{self.total} files, {rate:.1f} files/s, about {eta} left; files/s per node: {nodes}"
        )

    def finish(self) -> None:
        report = self.work.report
        for node in sorted(set(self.read) | set(self.encoded)):
            entry = report.nodes.setdefault(node, {"read": 0, "encoded": 0})
            entry["read"] += self.read[node]
            entry["encoded"] += self.encoded[node]
        self.read.clear()
        self.encoded.clear()
        if self.progress:
            self.progress.finish()
