"""The façade: an index folder (store) composed with its model (encoders), synced (ingest), searched (query).

:class:`Index` is what a Python user, the CLI, the web server and the demo hold. It owns the model's
lifecycle (loaded lazily, the image tower alone for a sync, the exported ONNX text tower for a cold
text search) and is the one place that checks a model against an index.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.spec import ModelSpec, Precision, parse_precision
from clipsearch.errors import (
    BadValueError,
    FolderNotIndexedError,
    IndexChangedError,
    IndexNotFoundError,
    ModelMismatchError,
    UsageError,
)
from clipsearch.store.catalog import IndexMeta
from clipsearch.store.folder import IndexFolder, exists, index_root
from clipsearch.store.vectors import DEFAULT_STORE_KIND, VectorStore

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from PIL import Image

    from clipsearch.encoders.cache import ModelCache
    from clipsearch.encoders.encoder import Encoder
    from clipsearch.encoders.facts import ModelFacts, ModelPreview
    from clipsearch.encoders.loading import ModelLoader
    from clipsearch.encoders.onnx_export import ExportOutcome
    from clipsearch.encoders.onnx_text import OnnxTextEncoder, TextEncoder
    from clipsearch.ingest.importer import ImportItem, SkippedItem
    from clipsearch.ingest.ray_engine import RayOptions
    from clipsearch.ingest.sync import Progress, SyncOptions, SyncReport
    from clipsearch.query.evalset import EvalSet
    from clipsearch.query.filters import Filters
    from clipsearch.query.grammar import Term
    from clipsearch.query.judgements import FittedCutoff
    from clipsearch.query.measure import Setting, SettingReport
    from clipsearch.query.rank import Hit, SearchOptions
    from clipsearch.store.catalog import Catalog, Judgement


class Index:
    """An index folder and its model. Open with :meth:`open` (search) or :meth:`open_for_write` (sync)."""

    def __init__(
        self,
        folder: IndexFolder,
        *,
        encoder: Encoder | None = None,
        precision: Precision = "fp32",
        cache: ModelCache | None = None,
        device: str = "cpu",
    ) -> None:
        from clipsearch.encoders.cache import ModelCache
        from clipsearch.encoders.device import parse_device

        self.folder = folder
        self.cache = cache or ModelCache.default()
        self._encoder = encoder  # the whole model (image and text towers)
        self._loader: ModelLoader | None = None  # the image tower alone, loading for a sync
        self._image_encoder: Encoder | None = None  # what _loader loaded, checked against the index
        self._meta_preview: ModelPreview | None = None  # the unchecked preview a new index's meta came from
        self._onnx_text: OnnxTextEncoder | bool | None = None  # False: looked, none usable
        self._precision = parse_precision(precision)
        self._device = parse_device(device)  # resolved when a model loads
        self._coverage: str | None = None  # the coverage asked for when this index was opened to write
        self._decode_scale: float | None = None  # and the decode scale
        self._models_meta = folder.meta  # the index the models above are for
        if encoder is not None:
            _check_same_model(folder.path, folder.meta, _meta_for(encoder.spec, encoder.facts))

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        encoder: Encoder | None = None,
        precision: Precision = "fp32",
        cache: ModelCache | None = None,
        device: str = "cpu",
    ) -> Index:
        """Open an existing index for searching.

        Args:
            path: the index folder.
            encoder: the index's model if already loaded; else it is loaded on first use.
            precision: precision to load the model with (``fp32``, ``bf16``, ``fp16`` or ``auto``).
            cache: the per-machine model cache (default: the user's cache folder).
            device: where a model loaded here runs: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch
                sees a GPU); text queries answered by the exported text tower run on the CPU.

        Raises:
            IndexNotFoundError: nothing is there.
            IndexCorruptError: something is there but it is not a clipsearch index.
            ModelMismatchError: ``encoder`` is not the index's model.
        """
        folder = IndexFolder.open(path)
        try:
            return cls(folder, encoder=encoder, precision=precision, cache=cache, device=device)
        except BaseException:
            folder.close()
            raise

    @classmethod
    def open_for_write(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        *,
        spec: ModelSpec | None = None,
        precision: Precision = "fp32",
        rebuild: bool = False,
        cache: ModelCache | None = None,
        coverage: str | None = None,
        decode_scale: float | None = None,
        device: str = "cpu",
        encode_here: bool = True,
    ) -> Index:
        """Open (creating if needed) an index to sync, holding the writer lock.

        Args:
            path: the index folder.
            encoder: the model to sync with, already loaded.
            spec: instead of ``encoder``, the model to sync with; when the index exists and records
                this model, the model is loaded only once a file needs encoding (a sync that finds
                nothing changed never loads it). Neither given: the model the index records (the
                index must exist).
            precision: precision to load ``spec`` with.
            device: where to load ``spec``: ``cpu``, ``cuda`` or ``auto`` (see :meth:`open`).
            rebuild: build a new index beside this one, from scratch, to replace it when the next
                :meth:`sync` completes; searches use the index as it was until then. A rebuild that
                was interrupted is resumed (if it was made with the same model).
            cache: the per-machine model cache (default: the user's cache folder).
            coverage: for a new index (or a rebuild): ``sides`` gives a wide or tall picture further
                vectors for the parts a centre-cropping model does not see (see
                :meth:`~clipsearch.encoders.pixels.PixelTransform.side_views`), ``none`` one vector
                per picture; None: ``sides`` where the model crops the centre.
            decode_scale: for a new index (or a rebuild): JPEGs are decoded at the largest DCT
                reduction that keeps their shorter side at least this many times the model's input
                (one of :data:`~clipsearch.encoders.facts.DECODE_SCALES`: 2 keeps fine patterns
                sharpest, 1.5 decodes a 12-MP photo at 1/8 instead of 1/4). None: the index's
                recorded scale (an index made before it was recorded: 2), else the default
                (:data:`~clipsearch.encoders.facts.DEFAULT_DECODE_SCALE`).
            encode_here: False when another machine encodes (``sync(ray=...)``): a new index is
                then made from the model's preview kept on this machine, without loading the
                model's weights here (without a preview, the model is loaded here as usual).

        Raises:
            UsageError: a rebuild without ``encoder`` or ``spec``.
            BadValueError: ``coverage`` or ``decode_scale`` unknown, or not the existing index's (they
                change with a rebuild).
            IndexNotFoundError: neither given and there is no index.
            IndexBusyError: another process is writing to this index.
            ModelMismatchError: the index was built with another model (use ``rebuild=True``).
        """
        from clipsearch.encoders.cache import ModelCache
        from clipsearch.encoders.loading import ModelLoader

        if encoder is None and spec is None:
            if rebuild:
                raise UsageError("A rebuild needs the encoder or the spec of the model to index with.")
            spec = recorded_spec(path)
            if spec is None:
                raise IndexNotFoundError(index_root(path))
        cache = cache or ModelCache.default()
        precision = parse_precision(precision)
        if coverage not in (None, *COVERAGES):
            raise BadValueError("coverage", coverage, f"choose {' or '.join(COVERAGES)}")
        decode_scale = check_decode_scale(decode_scale)
        want = encoder.spec if encoder is not None else spec
        assert want is not None
        loader: ModelLoader | None = None
        preview: ModelPreview | None = None
        if encoder is None and (rebuild or not exists(path)):
            # a new index records the model's details: kept on this machine from the model's last
            # build (checked once it is built), else known once it is built (a missing model fails
            # here, before any folder is made); its weights load in the background meanwhile
            preview = cache.preview(want)
            if encode_here or preview is None:
                loader = ModelLoader(want, precision=precision, image_only=True, device=device)
            if preview is None:
                assert loader is not None
                loader.facts()

        from_preview = False

        def new_meta() -> IndexMeta:
            if encoder is not None:
                return _meta_for(encoder.spec, encoder.facts, coverage, decode_scale)
            nonlocal loader, from_preview
            from_preview = preview is not None
            if preview is not None:
                return _meta_for(want, preview, coverage, decode_scale)
            if loader is None:  # the index was removed since the check above
                loader = ModelLoader(want, precision=precision, image_only=True, device=device)
            return _meta_for(want, loader.facts(), coverage, decode_scale)

        def resume(meta: IndexMeta) -> bool:  # an interrupted rebuild with this model is continued
            if coverage is not None and meta.coverage != coverage:
                return False
            if decode_scale is not None and meta.decode_scale != decode_scale:
                return False
            if encoder is not None:
                made = _meta_for(encoder.spec, encoder.facts, coverage or meta.coverage, meta.decode_scale)
                return made == replace(meta, store_kind=DEFAULT_STORE_KIND)
            return _label(meta.model, meta.pretrained) == _label(want.name, want.pretrained)

        if not rebuild:
            check_index_model(path, want)  # before the lock and any model load
        folder = IndexFolder.open_for_write(path, new_meta, rebuild=rebuild, resume=resume)
        try:
            if encoder is not None:
                _check_same_model(folder.path, folder.meta, _meta_for(encoder.spec, encoder.facts))
            else:
                _check_spec(folder.path, folder.meta, want)
            if coverage is not None and folder.meta.coverage != coverage:
                raise BadValueError(
                    "coverage",
                    coverage,
                    f"the index at {folder.path} records coverage {folder.meta.coverage!r}, which "
                    "changes only with a rebuild (or the model does not crop pictures)",
                )
            if decode_scale is not None and folder.meta.decode_scale != decode_scale:
                raise BadValueError(
                    "decode_scale",
                    decode_scale,
                    f"the index at {folder.path} records decode scale {folder.meta.decode_scale:g} (its "
                    "vectors were made so); it changes only with a rebuild",
                )
        except BaseException:
            folder.close()
            raise
        index = cls(folder, encoder=encoder, precision=precision, cache=cache, device=device)
        index._coverage = coverage
        index._decode_scale = decode_scale
        index._loader = loader
        index._meta_preview = preview if from_preview else None
        return index

    def reopen(self) -> Index:
        """The index now at this one's folder (a rebuild may have replaced it), this one closed.

        The model stays loaded when the index found there records the same model (and weights);
        otherwise the new index's model loads on first use.

        Raises:
            IndexNotFoundError, IndexCorruptError: as :meth:`open`; this index is left open then.
        """
        folder = IndexFolder.open(self.path)
        model = ("model", "pretrained", "weights_sha256", "dim")
        same = all(getattr(folder.meta, key) == getattr(self.meta, key) for key in model)
        try:
            encoder = self._encoder if same else None
            index = Index(
                folder, encoder=encoder, precision=self._precision, cache=self.cache, device=self._device
            )
        except BaseException:
            folder.close()
            raise
        if same:
            index._onnx_text = self._onnx_text
        self.close()
        return index

    def close(self) -> None:
        self.folder.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the index records ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def meta(self) -> IndexMeta:
        return self.folder.meta

    @property
    def catalog(self) -> Catalog:
        return self.folder.catalog

    @property
    def store(self) -> VectorStore:
        """The vector store as of the last committed batch."""
        return self.folder.store

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.meta.model, self.meta.pretrained)

    def info(self) -> dict[str, Any]:
        """What is in the index, which model, where it lives, the roots and their settings."""
        self.follow_rebuild()
        return self.folder.info()

    def forget(self, root: str | Path) -> int:
        """Remove a folder the index records, its files, and the vectors no other file uses.

        Needs the writer lock (:meth:`open_for_write`); loads no model. Returns how many files
        were removed.

        Raises:
            NotARootError: ``root`` is not one of the folders the index records.
        """
        if not self.folder.writable:
            raise UsageError("forget needs an index opened with Index.open_for_write.")
        return self.folder.forget_root(os.path.abspath(os.path.expanduser(root)))

    def follow_rebuild(self) -> bool:
        """A reader whose index a rebuild has replaced takes up the new one; a model that is not the
        new index's is put down (the right one loads when next needed). Whether the model changed.

        Searches call this themselves; a long-lived reader (the web server) calls it to know which
        index its answers come from (``folder.rebuild_id``)."""
        if self.folder.writable:
            return False
        self.folder.follow_rebuild()
        if _model_of(self.folder.meta) == _model_of(self._models_meta):
            return False
        self._encoder = self._image_encoder = self._loader = None
        self._onnx_text = None
        self._models_meta = self.folder.meta
        return True

    def skipped(self) -> list[tuple[str, str]]:
        """Files that were skipped, with their reasons, by path."""
        return self.catalog.skipped()

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed vector of ``path`` if the file is indexed and unchanged on disk, else None."""
        self.follow_rebuild()
        return self.folder.stored_vector(path)

    def checkpoint(self) -> None:
        """Fold the vectors committed since the last checkpoint into the FAISS file."""
        self.folder.checkpoint()

    # -- the model ----------------------------------------------------------------------------

    @property
    def encoder_loaded(self) -> bool:
        """Whether a model to encode images with is in memory already (loading it takes seconds)."""
        return self._encoder is not None or self._image_encoder is not None

    @property
    def model_loading(self) -> bool:
        """Whether a model is being loaded in the background (see :meth:`model_facts`)."""
        return self._loader is not None

    @property
    def encoder(self) -> Encoder:
        """The model this index was built with, loaded on first use and checked against the index."""
        if self._encoder is None:
            from clipsearch.encoders.loading import load_spec

            encoder = load_spec(self.spec, precision=self._precision, device=self._device)
            _check_same_model(self.path, self.meta, _meta_for(encoder.spec, encoder.facts))
            self._encoder = encoder
        return self._encoder

    def start_loading(self) -> None:
        """Unless a model is in memory, start loading the image tower a sync needs, in the background."""
        if self._encoder is None and self._image_encoder is None and self._loader is None:
            from clipsearch.encoders.loading import ModelLoader

            self._loader = ModelLoader(
                self.spec, precision=self._precision, image_only=True, device=self._device
            )

    def model_facts(self) -> ModelFacts:
        """Facts of the model a sync encodes with (input size, preprocessing); unless the model is in
        memory, this starts loading its image tower in the background and waits only until it is built."""
        if self._encoder is not None:
            return self._encoder.facts
        if self._image_encoder is not None:
            return self._image_encoder.facts
        self.start_loading()
        assert self._loader is not None
        return self._loader.facts()

    def check_preview(self, preview: ModelPreview | None = None) -> bool:
        """Whether ``preview`` (default: the one a new index's metadata came from) is the model's own.

        Waits until the model is built. If not, the machine's cache is corrected, and a new index
        made from the preview gets the model's metadata: nothing can have been committed with it.
        """
        from clipsearch.encoders.facts import ModelPreview

        preview = preview or self._meta_preview
        if preview is None:
            return True
        facts = self.model_facts()
        actual = ModelPreview.of(facts)
        if actual == preview:
            self._meta_preview = None
            return True
        self.cache.remember_preview(self.spec, actual)
        if self._meta_preview is not None:
            self.folder.write_meta(_meta_for(self.spec, facts, self._coverage, self._decode_scale))
            self._meta_preview = None
        return False

    @property
    def image_encoder(self) -> Encoder:
        """What a sync encodes images with: the model if loaded, else its image tower alone (a third
        less memory for ViT-B-32), loaded on first use (see :meth:`model_facts`)."""
        if self._encoder is not None:
            return self._encoder
        if self._image_encoder is None:
            self.start_loading()
            assert self._loader is not None
            encoder = self._loader.encoder()
            _check_same_model(self.path, self.meta, _meta_for(encoder.spec, encoder.facts))
            self._image_encoder, self._loader = encoder, None
        return self._image_encoder

    @property
    def text_encoder(self) -> TextEncoder:
        """What encodes query texts: the model if loaded, else the exported ONNX text encoder of the
        index's model (no torch import: a cold search starts in well under a second), else the model."""
        if self._encoder is None and self._onnx_text is None:
            from clipsearch.encoders.onnx_text import load_text_encoder

            self._onnx_text = load_text_encoder(self.cache, self.meta.weights_sha256, self.meta.dim) or False
        if self._encoder is None and self._onnx_text:
            return self._onnx_text  # type: ignore[return-value]
        return self.encoder

    def text_export_pending(self) -> bool:
        """Whether this model's text tower still needs its ONNX export on this machine (cheap)."""
        from clipsearch.encoders.onnx_text import export_pending

        return export_pending(self.cache, self.meta.weights_sha256, self.meta.dim)

    def export_text_encoder(self) -> ExportOutcome:
        """Write the ONNX text encoder that lets later cold text searches skip torch (once per weights).

        Needs the writer lock (:meth:`open_for_write`); :meth:`sync` calls it. Loads the model in
        fp32 only when the export is missing; a model that cannot be exported is no error (see the
        outcome's ``reason``).
        """
        from clipsearch.encoders.onnx_export import export_text_encoder

        if not self.folder.writable:
            raise UsageError("export_text_encoder needs an index opened with Index.open_for_write.")
        return export_text_encoder(self.cache, self.meta.weights_sha256, self.meta.dim, self._fp32_encoder)

    def _fp32_encoder(self) -> Encoder:
        if self._encoder is not None and self._encoder.precision == "fp32" and self._encoder.device == "cpu":
            return self._encoder  # the export traces the model on the CPU
        from clipsearch.encoders.loading import load_spec

        self._image_encoder = self._loader = None  # the sync is over: memory for the fp32 model
        encoder = load_spec(self.spec, precision="fp32")
        _check_same_model(self.path, self.meta, _meta_for(encoder.spec, encoder.facts))
        if self._encoder is None and self._precision == "fp32" and self._device == "cpu":
            self._encoder = encoder
        return encoder

    # -- what a query needs (query.vector.QueryEncoder) ---------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        self.follow_rebuild()
        return self.image_encoder.image_size

    @property
    def decode_side(self) -> int:
        """The shorter side JPEGs are decoded at, as this index decoded its files (its decode scale)."""
        from clipsearch.encoders.facts import draft_side

        return draft_side(self, self.meta.decode_scale)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.follow_rebuild()
        return self.text_encoder.encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """Image queries: the model if loaded, else its image tower alone (as a sync encodes), so a
        server answering text through the exported text encoder never holds the text tower twice."""
        self.follow_rebuild()
        return self.image_encoder.encode_images(images)

    # -- syncing and searching ----------------------------------------------------------------

    def sync(
        self,
        roots: list[str] | None = None,
        *,
        options: SyncOptions | None = None,
        progress: Progress | None = None,
        ray: RayOptions | None = None,
    ) -> SyncReport:
        """Bring the index in line with ``roots`` (default: every root indexed before).

        Afterwards (unless ``options.export_text`` is false), the model's text tower is exported
        once per model and machine, so that a cold text search in a new process skips torch.

        Args:
            ray: read, decode and encode the files on a Ray cluster (see
                :class:`~clipsearch.ingest.ray_engine.RayOptions`); the plan, the commits and the
                index stay on this machine. The files must be at the same paths on every node.

        Raises:
            RayMissingError: ``ray`` given and Ray not installed.
            ClusterError: the cluster cannot run the sync (see :class:`~clipsearch.errors.ClusterError`).
        """
        import time

        from clipsearch.ingest.sync import SyncOptions, sync

        started = time.monotonic()
        if options is None:  # on a GPU: more decoders and larger batches (see SyncOptions.for_device)
            from clipsearch.encoders.device import resolve_device

            options = SyncOptions.for_device(resolve_device(self._device))
        engine = None
        if ray is not None:
            from clipsearch.ingest.ray_engine import RayEngine

            engine = RayEngine(ray, self.spec, self._precision)
        report = sync(self.folder, _SyncModel(self), roots, options, progress, engine)
        self._optimize(report, progress)
        self.folder.finish_rebuild()  # a rebuild, now complete, replaces the index
        if options.export_text and self.text_export_pending():
            if progress is not None:
                progress.note(
                    "Exporting the text encoder for fast searches (once per model on this machine) ..."
                )
            outcome = self.export_text_encoder()
            report.text_export = "exported" if outcome.path is not None else "unavailable"
            report.text_export_reason = outcome.reason
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def import_vectors(
        self,
        batches: Iterable[Sequence[ImportItem | SkippedItem]],
        *,
        weights_sha256: str,
        roots: Sequence[str | Path] = (),
        progress: Progress | None = None,
    ) -> SyncReport:
        """Add files whose vectors were computed elsewhere (another process, a cluster), batch by batch.

        Each batch is committed like a sync's (with its vectors, in one transaction): a crash or
        Ctrl-C keeps the batches committed before. A rebuild (``open_for_write(..., rebuild=True)``)
        replaces the index once the import completes. Needs the writer lock (:meth:`open_for_write`).

        Args:
            batches: lists of :class:`~clipsearch.ingest.importer.ImportItem` (file record, content
                hash, unit vector of the index's model, or None for a content the index holds,
                size, date, side views) and :class:`~clipsearch.ingest.importer.SkippedItem` (a
                file that could not be used, and why).
            weights_sha256: the sha256 of the model weights that computed the vectors; must be the
                index's (``meta.weights_sha256``).
            roots: folders the files lie in, recorded in the index (a later sync of the index re-syncs them).
            progress: told how many files each batch held.

        Raises:
            ModelMismatchError: the vectors come from other weights than the index's.
            VectorDimensionError: a vector is not of the index's dimension.
            BadValueError: a vector that is not a unit vector, a path outside ``roots``, side views
                for an index without them, no vector for a content the index does not hold
                (nothing of that batch is kept).
            SyncInterrupted: Ctrl-C; committed batches are kept.
        """
        from clipsearch.ingest.importer import import_vectors

        if not self.folder.writable:
            raise UsageError("import_vectors needs an index opened with Index.open_for_write.")
        if weights_sha256 != self.meta.weights_sha256:
            label = _label(self.meta.model, self.meta.pretrained)
            raise ModelMismatchError(
                self.path,
                f"{label} with weights sha256 {self.meta.weights_sha256[:12]}",
                f"the model with weights sha256 {weights_sha256[:12]} that computed the vectors",
            )
        report = import_vectors(
            self.folder,
            batches,
            roots=[os.path.abspath(os.path.expanduser(r)) for r in roots],
            progress=progress,
        )
        self._optimize(report, progress)
        self.folder.finish_rebuild()  # an import into a rebuild, now complete, replaces the index
        return report

    def _optimize(self, report: SyncReport, progress: Progress | None) -> None:
        """After a sync or an import: the vector files take the kind the index's size calls for."""
        from clipsearch.ingest.sync import SyncInterrupted

        try:
            report.reorganized = self.folder.optimize(progress.note if progress is not None else None) or ""
        except KeyboardInterrupt:  # the files being written are left over; the index is as it was
            report.interrupted = True
            raise SyncInterrupted(report) from None

    def set_store(self, kind: str | None = None, memory_budget: int | None = None) -> None:
        """Choose how the vectors are stored; the next sync (or :meth:`optimize`) applies it.

        Args:
            kind: ``auto`` (by size: ``sq8`` exhaustive search up to 50,000 vectors, then ``ivfpq``
                approximate search), or ``flat``, ``sq8``, ``ivfpq`` whatever the size.
            memory_budget: bytes an approximate index may keep in memory for searching (its
                codes' size follows); see :func:`clipsearch.store.maintain.parse_budget`.

        Raises:
            BadValueError: an unknown kind.
        """
        if not self.folder.writable:
            raise UsageError("set_store needs an index opened with Index.open_for_write.")
        self.folder.set_store_settings(kind, memory_budget)

    def optimize(self, progress: Progress | None = None) -> str | None:
        """Checkpoint, merge segments when due, and rebuild the vector files if the index outgrew
        their kind (searches use the old files meanwhile). Returns why it rebuilt, or None."""
        if not self.folder.writable:
            raise UsageError("optimize needs an index opened with Index.open_for_write.")
        return self.folder.optimize(progress.note if progress is not None else None)

    def search_vectors(
        self,
        queries: npt.NDArray[np.float32],
        k: int = 10,
        *,
        filters: Filters | None = None,
        per_file: int | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``queries`` (unit vectors of the index's dimension).

        Args:
            queries: ``(d,)`` or ``(n, d)`` unit vectors.
            k: most hits returned per query (a video's hits are its moments, with their times).
            filters: restrict the candidates (folder, dates, types, size) before the top-k cut.
            per_file: most moments of one video returned (None: every moment that ranks).

        Raises:
            FolderNotIndexedError: ``filters.folder`` is not inside an indexed folder.
        """
        from clipsearch.query.rank import rank

        changed = self.follow_rebuild()
        if filters is not None and filters.folder is not None:
            self._check_folder(filters.folder)
        queries = np.atleast_2d(queries)
        store = self.store
        if queries.shape[1] != store.dim:
            if changed or self.follow_rebuild():  # encoded for the index a rebuild has just replaced
                raise IndexChangedError(self.path)
            raise BadValueError("queries", queries.shape, f"the index holds {store.dim}-d vectors")
        return rank(store, self.catalog, queries, k, filters=filters, per_file=per_file)

    def _check_folder(self, folder: str) -> None:
        roots = self.catalog.roots()
        if not any(
            folder == r or folder.startswith(r.rstrip("/") + "/") or r.startswith(folder.rstrip("/") + "/")
            for r in roots
        ):
            raise FolderNotIndexedError(folder, roots)
        # a folder that is gone may still hold indexed files (an unplugged drive); a typo holds none
        if not os.path.isdir(folder) and not self.catalog.holds_files_under(folder):
            raise FolderNotIndexedError(folder, roots, missing=True)

    def search(
        self,
        query: str | list[Term],
        k: int = 10,
        *,
        filters: Filters | None = None,
        per_file: int | None = None,
    ) -> list[Hit]:
        """Search with the query language (e.g. ``"beach + dog:0.5 - people + ./ref.jpg"``) or terms."""
        from clipsearch.query.grammar import parse_query
        from clipsearch.query.vector import query_vector

        terms = parse_query(query) if isinstance(query, str) else query
        return self.search_vectors(query_vector(self, terms), k, filters=filters, per_file=per_file)[0]

    def search_text(
        self, text: str, k: int = 10, *, filters: Filters | None = None, per_file: int | None = None
    ) -> list[Hit]:
        """Images (and moments of videos) best matching a text."""
        from clipsearch.query.vector import text_vector

        return self.search_vectors(text_vector(self, text), k, filters=filters, per_file=per_file)[0]

    def search_image(
        self,
        image: str | Path | Image.Image,
        k: int = 10,
        *,
        filters: Filters | None = None,
        per_file: int | None = None,
    ) -> list[Hit]:
        """Images (and moments of videos) most similar to an image: a file path (indexed or not) or a
        PIL image. A frame exported from a video finds the moment it came from."""
        from clipsearch.query.vector import image_vector

        return self.search_vectors(image_vector(self, image), k, filters=filters, per_file=per_file)[0]

    # -- judgements: marks, refinement, the fitted cutoff, evaluation -------------------------

    def mark(
        self,
        query: str | list[Term],
        paths: Sequence[str | Path] = (),
        *,
        relevant: bool | None,
        content_ids: Sequence[int] = (),
    ) -> int:
        """Mark pictures relevant (``True``) or not (``False``) to a query, or remove their marks
        (``None``). Marks are stored in the index by picture content (they survive renames, syncs
        and rebuilds) under the query as written in the grammar (see
        :func:`~clipsearch.query.judgements.query_key`). Needs no writer lock and no model.

        Args:
            query: the query (text or an expression in the query grammar).
            paths: indexed files (a file of an unplugged drive counts).
            relevant: the mark.
            content_ids: pictures by content id instead (the web page).

        Returns how many marks were written or removed.

        Raises:
            JudgedPathError: a path names no indexed picture (missing, outside the index's folders,
                not indexed yet, or skipped); nothing is marked then.
            IndexAccessError: the index is on read-only media.
        """
        return self.mark_many(query, {relevant: paths}, content_ids=content_ids)[relevant]

    def mark_many(
        self,
        query: str | list[Term],
        marks: Mapping[bool | None, Sequence[str | Path]],
        *,
        content_ids: Sequence[int] = (),
    ) -> dict[bool | None, int]:
        """:meth:`mark` with several labels at once (``{True: [...], False: [...], None: [...]}``):
        every path is checked before anything is written, and all marks are written together.
        ``content_ids`` get the first label. Returns how many marks each label wrote or removed."""
        import time

        from clipsearch.query.judgements import content_ids_of, query_key

        self.follow_rebuild()
        key = query_key(query)
        rows: list[tuple[int, bool | None]] = []
        for n, (label, paths) in enumerate(marks.items()):
            ids = [*(content_ids if n == 0 else ()), *content_ids_of(self.catalog, [str(p) for p in paths])]
            rows += [(cid, label) for cid in ids]
        changed = self.catalog.mark(key, rows, time.time())
        counts = dict.fromkeys(marks, 0)
        for (_, label), done in zip(rows, changed, strict=True):
            counts[label] += done
        return counts

    def judgements(self, query: str | list[Term] | None = None) -> list[Judgement]:
        """Every stored mark (of ``query`` only, if given), by query then time."""
        from clipsearch.query.judgements import query_key

        self.follow_rebuild()
        return self.catalog.judgements(None if query is None else query_key(query))

    def refined_vector(self, query: str | list[Term]) -> npt.NDArray[np.float32]:
        """The query's vector moved by its marks (Rocchio; weights in :mod:`clipsearch.query.feedback`).

        Raises:
            NoFeedbackError: no picture indexed now is marked for this query.
        """
        from clipsearch.query.feedback import NoFeedbackError, refined_vector
        from clipsearch.query.grammar import parse_query
        from clipsearch.query.judgements import QueryMarks, query_key
        from clipsearch.query.vector import query_vector

        terms = parse_query(query) if isinstance(query, str) else query
        marks = QueryMarks.of(query_key(terms), self.judgements(terms))
        if not marks:
            raise NoFeedbackError(query_key(terms))
        return refined_vector(self.store, query_vector(self, terms), marks.relevant, marks.irrelevant)

    def search_refined(
        self,
        query: str | list[Term],
        k: int = 10,
        *,
        filters: Filters | None = None,
        per_file: int | None = None,
    ) -> list[Hit]:
        """:meth:`search` with the query refined by its marks (see :meth:`refined_vector`)."""
        return self.search_vectors(self.refined_vector(query), k, filters=filters, per_file=per_file)[0]

    def fitted_cutoff(self) -> FittedCutoff | None:
        """The calibrated cutoff of this index's model: the score threshold that maximises F1 on the
        stored marks (None without enough of them; see :mod:`clipsearch.query.judgements`).

        Fitting encodes every marked query once; the result is kept in the catalog until the marks,
        the pictures they name or the model change.
        """
        import json

        from clipsearch.query.judgements import FittedCutoff, fit_cutoff

        self.follow_rebuild()
        count, latest = self.catalog.judgements_state()
        if not count:
            return None
        state = [count, latest, self.meta.weights_sha256]
        cached = self.catalog.get(_CUTOFF_KEY)
        if cached:
            saved = json.loads(cached)
            if saved.get("state") == state:
                fit = saved.get("fit")
                return None if fit is None else FittedCutoff(fit[0], fit[1], fit[2], tuple(fit[3]))
        fitted = fit_cutoff(self, self.store, self.catalog, self.catalog.judgements())
        row = None if fitted is None else [fitted.threshold, fitted.f1, fitted.judgements, fitted.queries]
        try:
            with self.catalog.transaction():
                self.catalog.set(_CUTOFF_KEY, json.dumps({"state": state, "fit": row}))
        except sqlite3.OperationalError:
            pass  # read-only media: fitted again next time
        return fitted

    def calibrate(self, options: SearchOptions) -> tuple[SearchOptions, FittedCutoff | None]:
        """``options`` with the fitted cutoff filled in where they ask for one (``cutoff`` ``auto``)
        and the index has enough marks; and that cutoff (None: the break is used)."""
        if not options.calibrate:
            return options, None
        fitted = self.fitted_cutoff()
        return (options if fitted is None else replace(options, calibrated=fitted.threshold)), fitted

    def evaluate(self, evalset: EvalSet | None, settings: Sequence[Setting]) -> list[SettingReport]:
        """Score the search on an evaluation set under each setting (one report per setting).

        Args:
            evalset: queries with their relevant files (a file read with
                :func:`~clipsearch.query.measure.read_eval_file`); None: the stored marks.
            settings: how to search (see :class:`~clipsearch.query.measure.Setting`). A setting's
                ``index`` opens that index (another model over the same photos), its ``precision``
                encodes the queries with the torch model at that precision. The marks of this index
                drive refinement and the fitted cutoff in every setting (matched by picture, so they
                serve another index of the same photos too, fitted on its own model).

        When a setting refines, every report also scores ``new p@10`` (see
        :func:`~clipsearch.query.measure.run_setting`).

        Raises:
            NoJudgementsError: ``evalset`` is None and the index holds no usable marks.
            EvalFileError: a relevant path or pattern of the file finds nothing in an index.
            BadValueError: a setting names a store kind the index does not have, or asks for the
                approximate search of an index searched exactly.
        """
        from clipsearch.query.evalset import from_judgements
        from clipsearch.query.judgements import by_query, fit_cutoff
        from clipsearch.query.measure import remap, run_setting
        from clipsearch.store.segmented import searching_exactly

        approximate = bool(getattr(self.store, "approximate", False))
        for setting in settings:
            if setting.store in (None, "exact", self.meta.store_kind):
                continue
            if setting.store != "approximate":
                raise BadValueError(
                    "compare",
                    f"store={setting.store}",
                    f"give exact, approximate or the index's own kind ({self.meta.store_kind})",
                )
            if not approximate:
                raise BadValueError(
                    "compare",
                    f"store={setting.store}",
                    f"the index at {self.path} is searched exactly ({self.meta.store_kind}: every vector "
                    "compared); it has no approximate search to compare",
                )
        marks = self.judgements()
        evalset = evalset or from_judgements(marks, self.path)
        residual = any(s.refine for s in settings)
        reports = []
        for setting in settings:
            target = self._for_setting(setting)
            try:
                own = target is self
                mapped = marks if own else remap(marks, target.catalog)
                fitted = None
                if setting.options().calibrate:
                    fitted = (
                        self.fitted_cutoff()
                        if own
                        else fit_cutoff(target, target.store, target.catalog, mapped)
                    )
                with searching_exactly(target.store, setting.store == "exact"):
                    reports.append(
                        run_setting(
                            target, evalset, setting, fitted=fitted, marks=by_query(mapped), residual=residual
                        )
                    )
            finally:
                if target is not self:
                    target.close()
        return reports

    def _for_setting(self, setting: Setting) -> Index:
        """This index, or the one a setting names (another index, or this one at another precision)."""
        if setting.index is None and setting.precision is None:
            return self
        other = Index.open(
            setting.index or self.path,
            precision=setting.precision or self._precision,
            cache=self.cache,
            device=self._device,
        )
        try:
            if setting.precision is not None:
                _ = other.encoder  # texts then encode with the torch model at that precision
        except BaseException:
            other.close()
            raise
        return other


#: Catalog meta key of the cached fitted cutoff (see ``Index.fitted_cutoff``).
_CUTOFF_KEY = "cutoff_fit"


class _SyncModel:
    """The index's model as a sync asks for it (:class:`clipsearch.ingest.sync.SyncModel`)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    @property
    def label(self) -> str:
        return self.index.spec.label()

    @property
    def in_memory(self) -> bool:
        return self.index.encoder_loaded or self.index.model_loading

    def start(self) -> None:
        self.index.start_loading()

    def preview(self) -> ModelPreview | None:
        return None if self.index.encoder_loaded else self.index.cache.preview(self.index.spec)

    def facts(self) -> ModelFacts:
        from clipsearch.encoders.facts import ModelPreview

        facts = self.index.model_facts()
        actual = ModelPreview.of(facts)
        if actual != self.index.cache.preview(self.index.spec):
            self.index.cache.remember_preview(self.index.spec, actual)
        return facts

    def confirm(self, preview: ModelPreview | None) -> bool:
        return self.index.check_preview(preview)

    def confirmed(self, preview: ModelPreview) -> None:
        if self.index._meta_preview == preview:
            self.index._meta_preview = None

    def encoder(self) -> Encoder:
        return self.index.image_encoder


# -- the one place that checks a model against an index -------------------------------------


def _model_of(meta: IndexMeta) -> tuple[str, str, str, int]:
    return meta.model, meta.pretrained, meta.weights_sha256, meta.dim


#: What extra vectors a picture may get (see ``Index.open_for_write``'s ``coverage``).
COVERAGES = ("sides", "none")


def check_decode_scale(value: float | None) -> float | None:
    """``value`` as a decode scale (None stays None).

    Raises:
        BadValueError: not one of :data:`~clipsearch.encoders.facts.DECODE_SCALES`.
    """
    from clipsearch.encoders.facts import DECODE_SCALES

    if value is None:
        return None
    if value not in DECODE_SCALES:
        choices = ", ".join(f"{s:g}" for s in DECODE_SCALES)
        raise BadValueError("decode_scale", value, f"choose {choices} (times the model's input side)")
    return float(value)


def _meta_for(
    spec: ModelSpec,
    facts: ModelFacts | ModelPreview,
    coverage: str | None = None,
    decode_scale: float | None = None,
) -> IndexMeta:
    """The metadata a new index of this model records; ``coverage`` None: ``sides`` where the model
    crops the centre of a picture (a model that sees the whole frame needs no side views);
    ``decode_scale`` None: the default."""
    from clipsearch.encoders.facts import DEFAULT_DECODE_SCALE

    transform = facts.pixel_transform
    crops = transform is not None and transform.resize_mode == "shortest"
    return IndexMeta(
        model=spec.name,
        pretrained=spec.pretrained,
        weights_sha256=facts.weights_sha256,
        dim=facts.dim,
        store_kind=DEFAULT_STORE_KIND,
        coverage="sides" if crops and coverage in (None, "sides") else "none",
        decode_scale=DEFAULT_DECODE_SCALE if decode_scale is None else decode_scale,
    )


def _label(model: str, pretrained: str) -> str:
    return f"{model} ({pretrained})" if pretrained else model


def _check_same_model(root: Path, have: IndexMeta, want: IndexMeta) -> None:
    have_label, want_label = _label(have.model, have.pretrained), _label(want.model, want.pretrained)
    if have_label != want_label:
        raise ModelMismatchError(root, have_label, want_label)
    if (have.weights_sha256, have.dim) != (want.weights_sha256, want.dim):
        raise ModelMismatchError(
            root,
            f"{have_label} with weights sha256 {have.weights_sha256[:12]}",
            f"{want_label} with weights sha256 {want.weights_sha256[:12]}",
        )


def _check_spec(root: Path, have: IndexMeta, spec: ModelSpec) -> None:
    """Fail if the index records another model name or pretrained tag than ``spec`` (weights unchecked)."""
    have_label, want_label = _label(have.model, have.pretrained), _label(spec.name, spec.pretrained)
    if have_label != want_label:
        raise ModelMismatchError(root, have_label, want_label)


def check_index_model(path: str | Path, spec: ModelSpec) -> None:
    """Before loading any weights: fail if the index at ``path`` records another model than ``spec``."""
    from clipsearch.store.folder import exists

    if not exists(path):
        return
    with IndexFolder.open(path) as existing:
        _check_spec(index_root(path), existing.meta, spec)


def recorded_spec(path: str | Path) -> ModelSpec | None:
    """The model the index at ``path`` records, or None when there is no index."""
    from clipsearch.store.folder import exists

    if not exists(path):
        return None
    with IndexFolder.open(path) as existing:
        return ModelSpec(existing.meta.model, existing.meta.pretrained)
