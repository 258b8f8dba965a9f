"""Index: the one object that owns an index directory (SQLite catalog + FAISS vectors) on disk.

Readers see the last committed state: the FAISS checkpoint file named in the catalog, plus the
vectors committed since (``pending``), minus contents deleted since (``tombstones``). The commit
protocol is described in ``indexes/README.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.catalog import Catalog, IndexMeta
from clipsearch.errors import (
    IndexAccessError,
    IndexBusyError,
    IndexCorruptError,
    IndexNotFoundError,
    ModelMismatchError,
    UsageError,
)
from clipsearch.vectors import DEFAULT_STORE_KIND, VectorStore, create_store, fsync_path, load_store

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import Encoder
    from clipsearch.grammar import Term
    from clipsearch.ingest import Progress, SyncOptions, SyncReport
    from clipsearch.models import ModelFacts, ModelLoader, ModelPreview, ModelSpec
    from clipsearch.onnx_export import ExportOutcome
    from clipsearch.onnx_text import OnnxTextEncoder, TextEncoder
    from clipsearch.search import Filters, Hit

CATALOG_FILE = "catalog.sqlite"
LOCK_FILE = "write.lock"
_OWN_FILES = (CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm", LOCK_FILE)


def vectors_file(gen: int) -> str:
    """Name of the FAISS checkpoint holding every vector committed up to ``gen``."""
    return f"vectors-{gen:010d}.faiss"


class Index:
    """An index directory. Open with :meth:`open` (read) or :meth:`open_for_write` (create/sync)."""

    def __init__(self, path: Path, catalog: Catalog, meta: IndexMeta, *, lock_fd: int | None = None) -> None:
        self.path = path
        self.catalog = catalog
        self.meta = meta
        self._lock_fd = lock_fd
        self._store: VectorStore | None = None
        self._store_gen = -1
        self._encoder: Encoder | None = None
        self._loader: ModelLoader | None = None  # the image tower alone, loading for a sync
        self._image_encoder: Encoder | None = None  # what _loader loaded, checked against the index
        self._meta_preview: ModelPreview | None = None  # the unchecked preview a new index's meta came from
        self._onnx_text: OnnxTextEncoder | bool | None = None  # False: looked, none usable
        self._precision = "fp32"

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, encoder: Encoder | None = None, precision: str = "fp32") -> Index:
        """Open an existing index for searching.

        Args:
            path: the index folder.
            encoder: the index's model if already loaded; else it is loaded on first use.
            precision: precision to load the model with (``fp32``, ``bf16`` or ``auto``).

        Raises:
            IndexNotFoundError: nothing is there.
            IndexCorruptError: something is there but it is not a clipsearch index.
        """
        root = Path(path).expanduser().absolute()
        catalog_path = root / CATALOG_FILE
        if root.exists() and not root.is_dir():
            raise IndexCorruptError(f"{root} is a file, not an index folder. Choose another --index path.")
        if not catalog_path.is_file():
            raise IndexNotFoundError(
                f"No index at {root}. Create one with: clipsearch index PHOTO_FOLDER --index {root}"
            )
        catalog = Catalog(catalog_path)
        meta = catalog.meta()
        if meta is None:
            catalog.close()
            raise IndexCorruptError(f"{catalog_path} holds no index metadata. Re-create it with --rebuild.")
        index = cls(root, catalog, meta)
        index._encoder = encoder
        index._precision = precision
        return index

    @classmethod
    def open_for_write(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        *,
        spec: ModelSpec | None = None,
        precision: str = "fp32",
        rebuild: bool = False,
    ) -> Index:
        """Open (creating if needed) an index to sync, holding the writer lock.

        Args:
            path: the index folder.
            encoder: the model to sync with, already loaded.
            spec: instead of ``encoder``, the model to sync with; when the index exists and records
                this model, the model is loaded only once a file needs encoding (a sync that finds
                nothing changed never loads it).
            precision: precision to load ``spec`` with.
            rebuild: delete the index's contents first.

        Raises:
            UsageError: neither ``encoder`` nor ``spec`` given.
            IndexBusyError: another process is writing to this index.
            ModelMismatchError: the index was built with another model (use ``rebuild=True``).
        """
        if encoder is None and spec is None:
            raise UsageError("open_for_write needs the encoder or the spec of the model to index with.")
        root = Path(path).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise IndexCorruptError(f"{root} is a file, not an index folder. Choose another --index path.")
        loader = preview = None
        if encoder is None and (rebuild or not (root / CATALOG_FILE).is_file()):
            from clipsearch.models import ModelLoader, cached_preview

            assert spec is not None
            # a new index records the model's details: kept on this machine from the model's last
            # build (checked once it is built), else known once it is built; its weights load in
            # the background while the sync starts decoding
            preview = cached_preview(spec)
            loader = ModelLoader(spec, precision=precision, image_only=True)
            if preview is None:
                loader.facts()
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = _acquire_lock(root)
        except OSError as exc:
            raise IndexAccessError(
                f"Cannot write to the index folder {root}: {exc.strerror or exc}. "
                "Choose a writable place with --index, or fix the folder's permissions."
            ) from exc
        try:
            if rebuild:
                _remove_index_files(root)
            created = not (root / CATALOG_FILE).exists()
            if created and encoder is not None:
                _create_catalog(root / CATALOG_FILE, _meta_for(encoder.spec, encoder.facts))
            elif created:
                assert spec is not None
                if loader is None:  # the index was removed since the check above
                    from clipsearch.models import ModelLoader

                    loader = ModelLoader(spec, precision=precision, image_only=True)
                _create_catalog(root / CATALOG_FILE, _meta_for(spec, preview or loader.facts()))
            catalog = Catalog(root / CATALOG_FILE, writer=True)
            meta = catalog.meta()
            if meta is None:
                catalog.close()
                raise IndexCorruptError(
                    f"{root / CATALOG_FILE} holds no index metadata. Re-create the index with --rebuild."
                )
            if encoder is not None:
                _check_same_model(root, meta, _meta_for(encoder.spec, encoder.facts))
            else:
                assert spec is not None
                try:
                    _check_spec(root, meta, spec)
                except ModelMismatchError:
                    catalog.close()
                    raise
        except BaseException:
            os.close(lock_fd)
            raise
        index = cls(root, catalog, meta, lock_fd=lock_fd)
        index._encoder = encoder
        index._loader = loader
        index._meta_preview = preview if created else None
        index._precision = precision
        index._sweep_stale_vector_files()
        return index

    def close(self) -> None:
        self.catalog.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model --------------------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        from clipsearch.models import ModelSpec

        return ModelSpec(self.meta.model, self.meta.pretrained)

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
            from clipsearch.models import load_spec

            encoder = load_spec(self.spec, precision=self._precision)
            _check_same_model(self.path, self.meta, _meta_for(encoder.spec, encoder.facts))
            self._encoder = encoder
        return self._encoder

    def start_loading(self) -> None:
        """Unless a model is in memory, start loading the image tower a sync needs, in the background."""
        if self._encoder is None and self._image_encoder is None and self._loader is None:
            from clipsearch.models import ModelLoader

            self._loader = ModelLoader(self.spec, precision=self._precision, image_only=True)

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

    def cached_preview(self) -> ModelPreview | None:
        """The model's preview kept on this machine (see :class:`~clipsearch.models.ModelPreview`);
        None when a model is in memory already."""
        if self.encoder_loaded:
            return None
        from clipsearch.models import cached_preview

        return cached_preview(self.spec)

    def check_preview(self, preview: ModelPreview | None = None) -> bool:
        """Whether ``preview`` (default: the one a new index's metadata came from) is the model's own.

        Waits until the model is built. If not, the machine's cache is corrected, and a new index
        made from the preview gets the model's metadata: nothing can have been committed with it.
        """
        from clipsearch.models import ModelPreview, remember_preview

        preview = preview or self._meta_preview
        if preview is None:
            return True
        facts = self.model_facts()
        actual = ModelPreview.of(facts)
        if actual == preview:
            self._meta_preview = None
            return True
        remember_preview(self.spec, actual)
        if self._meta_preview is not None:
            self.meta = _meta_for(self.spec, facts)
            self.catalog.write_meta(self.meta)
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
        """What encodes query texts: the model if loaded, else the index's exported ONNX text encoder
        (no torch import: a cold search starts in well under a second), else the model, loaded now."""
        if self._encoder is None and self._onnx_text is None:
            from clipsearch.onnx_text import load_text_encoder

            self._onnx_text = load_text_encoder(self.meta) or False
        if self._encoder is None and self._onnx_text:
            return self._onnx_text  # type: ignore[return-value]
        return self.encoder

    def export_text_encoder(self) -> ExportOutcome:
        """Write the ONNX text encoder that lets later cold text searches skip torch (once per weights).

        Needs the writer lock (:meth:`open_for_write`). Loads the model in fp32 only when the export
        is missing; a model that cannot be exported is no error (see the outcome's ``reason``).
        """
        from clipsearch.onnx_export import export_text_encoder

        if self._lock_fd is None:
            raise UsageError("export_text_encoder needs an index opened with Index.open_for_write.")
        return export_text_encoder(self.meta, self._fp32_encoder)

    def _fp32_encoder(self) -> Encoder:
        if self._encoder is not None and self._encoder.precision == "fp32":
            return self._encoder
        from clipsearch.models import load_spec

        self._image_encoder = self._loader = None  # the sync is over: memory for the fp32 model
        encoder = load_spec(self.spec, precision="fp32")
        _check_same_model(self.path, self.meta, _meta_for(encoder.spec, encoder.facts))
        if self._encoder is None and self._precision == "fp32":
            self._encoder = encoder
        return encoder

    # -- vectors ------------------------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        """The vector store as of the last committed batch (refreshed if the catalog moved on)."""
        gen = self.catalog.get_int("gen")
        if self._store is None or gen != self._store_gen:
            self._refresh_store()
        assert self._store is not None
        return self._store

    def _refresh_store(self) -> None:
        for _ in range(10):  # a checkpoint may replace the file between our snapshot and opening it
            with self.catalog.snapshot():
                gen = self.catalog.get_int("gen")
                vgen = self.catalog.get_int("vectors_gen")
                incremental = self._store is not None and vgen <= self._store_gen
                since = self._store_gen if incremental else vgen
                ids, vectors = self.catalog.pending_after(since, self.meta.dim)
                dead = self.catalog.tombstones_after(since)
            try:
                store = (
                    self._store if incremental and self._store is not None else self._load_checkpoint(vgen)
                )
            except FileNotFoundError:
                continue
            store.remove(dead)
            store.add(ids, vectors)
            self._store, self._store_gen = store, gen
            return
        raise IndexCorruptError(
            f"The vectors file {self.path / vectors_file(vgen)} named by the catalog is missing. "
            "Re-create the index with: clipsearch index --rebuild"
        )

    def _load_checkpoint(self, vgen: int) -> VectorStore:
        if vgen == 0:
            return create_store(self.meta.store_kind, self.meta.dim)
        path = self.path / vectors_file(vgen)
        try:
            return load_store(self.meta.store_kind, path)
        except RuntimeError as exc:  # faiss raises RuntimeError on unreadable files
            if not path.exists():  # replaced by a newer checkpoint since our snapshot: retry
                raise FileNotFoundError(path) from exc
            raise IndexCorruptError(
                f"{path} cannot be read ({str(exc).splitlines()[0]}). "
                "Re-create the index with: clipsearch index --rebuild"
            ) from exc

    def checkpoint(self) -> None:
        """Fold the pending vectors into a new FAISS file (written first), then point the catalog at it."""
        gen = self.catalog.get_int("gen")
        old = self.catalog.get_int("vectors_gen")
        if gen == old:
            return
        store = self.store
        store.save(self.path / vectors_file(self._store_gen))
        with self.catalog.transaction():
            self.catalog.set("vectors_gen", self._store_gen)
            self.catalog.forget_log_through(self._store_gen)
        self.catalog.reclaim_space()
        self._sweep_stale_vector_files()

    def _sweep_stale_vector_files(self) -> None:
        keep = vectors_file(self.catalog.get_int("vectors_gen"))
        for entry in self.path.glob("vectors-*.faiss*"):
            if entry.name != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed vector of ``path`` if the file is indexed and unchanged on disk, else None."""
        state = self.catalog.file(path)
        if state is None or state.content_id is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns):
            return None
        store = self.store
        return store.reconstruct(np.array([state.content_id], dtype=np.int64))[0]

    # -- the public API -----------------------------------------------------------------------

    def sync(
        self,
        roots: list[str] | None = None,
        *,
        options: SyncOptions | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Bring the index in line with ``roots`` (default: every root indexed before)."""
        from clipsearch.ingest import SyncOptions, sync

        return sync(self, roots, options or SyncOptions(), progress)

    def search_vectors(
        self, queries: npt.NDArray[np.float32], k: int = 10, *, filters: Filters | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``queries`` (unit vectors of the index's dimension).

        Args:
            queries: ``(d,)`` or ``(n, d)`` unit vectors.
            k: most files returned per query.
            filters: restrict the candidates (folder, dates, types, size) before the top-k cut.
        """
        from clipsearch.search import rank

        if filters is not None and filters.folder is not None:
            self._check_folder(filters.folder)
        return rank(self.store, self.catalog, np.atleast_2d(queries), k, filters=filters)

    def _check_folder(self, folder: str) -> None:
        roots = self.catalog.roots()
        if not any(
            folder == r or folder.startswith(r.rstrip("/") + "/") or r.startswith(folder) for r in roots
        ):
            raise UsageError(
                f"--in {folder} is not inside an indexed folder ({', '.join(roots) or 'none yet'})."
            )

    def search(self, query: str | list[Term], k: int = 10, *, filters: Filters | None = None) -> list[Hit]:
        """Search with the query language (e.g. ``"beach + dog:0.5 - people + ./ref.jpg"``) or terms."""
        from clipsearch.grammar import parse_query
        from clipsearch.query import query_vector

        terms = parse_query(query) if isinstance(query, str) else query
        return self.search_vectors(query_vector(self, terms), k, filters=filters)[0]

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """Images best matching a text."""
        from clipsearch.query import text_vector

        return self.search_vectors(text_vector(self, text), k)[0]

    def search_image(self, image: str | Path | Image.Image, k: int = 10) -> list[Hit]:
        """Images most similar to an image: a file path (indexed or not) or a PIL image."""
        from clipsearch.query import image_vector

        return self.search_vectors(image_vector(self, image), k)[0]

    def info(self) -> dict[str, Any]:
        """What is in the index, which model, where it lives."""
        counts = self.catalog.counts()
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return {
            "index": str(self.path),
            "model": self.meta.model,
            "pretrained": self.meta.pretrained,
            "weights_sha256": self.meta.weights_sha256,
            "dim": self.meta.dim,
            "store": self.meta.store_kind,
            "schema_version": self.meta.schema_version,
            "count": counts["files"],
            "vectors": counts["vectors"],
            "skipped": counts["skipped"],
            "roots": self.catalog.roots(),
            "size_bytes": size,
        }


def _meta_for(spec: ModelSpec, facts: ModelFacts | ModelPreview) -> IndexMeta:
    return IndexMeta(
        model=spec.name,
        pretrained=spec.pretrained,
        weights_sha256=facts.weights_sha256,
        dim=facts.dim,
        store_kind=DEFAULT_STORE_KIND,
    )


def _label(model: str, pretrained: str) -> str:
    return f"{model} ({pretrained})" if pretrained else model


def _mismatch(root: Path, have: str, want: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"The index at {root} was built with model {have}, but the model now in use is {want}. "
        "Vectors of two models cannot be mixed. Re-run with --rebuild to re-index everything with "
        "the new model, or use --index to write a separate index."
    )


def _check_same_model(root: Path, have: IndexMeta, want: IndexMeta) -> None:
    have_label, want_label = _label(have.model, have.pretrained), _label(want.model, want.pretrained)
    if have_label != want_label:
        raise _mismatch(root, have_label, want_label)
    if (have.weights_sha256, have.dim) != (want.weights_sha256, want.dim):
        raise _mismatch(
            root,
            f"{have_label} with weights sha256 {have.weights_sha256[:12]}",
            f"{want_label} with weights sha256 {want.weights_sha256[:12]}",
        )


def check_index_model(path: str | Path, spec: ModelSpec) -> None:
    """Before loading any weights: fail if the index at ``path`` records another model than ``spec``."""
    root = Path(path).expanduser().absolute()
    if not (root / CATALOG_FILE).is_file():
        return
    with Index.open(root) as existing:
        _check_spec(root, existing.meta, spec)


def _check_spec(root: Path, have: IndexMeta, spec: ModelSpec) -> None:
    """Fail if the index records another model name or pretrained tag than ``spec`` (weights unchecked)."""
    have_label, want_label = _label(have.model, have.pretrained), _label(spec.name, spec.pretrained)
    if have_label != want_label:
        raise _mismatch(root, have_label, want_label)


def _create_catalog(path: Path, meta: IndexMeta) -> None:
    """Create a catalog with its metadata under a temporary name, then rename it into place.

    A reader therefore never sees a catalog without tables or metadata.
    """
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    catalog = Catalog(tmp, writer=True)
    catalog.write_meta(meta)
    catalog.close()
    os.replace(tmp, path)
    fsync_path(path.parent)


def check_not_busy(path: str | Path) -> None:
    """Fail fast (before loading any model) if another process is writing to the index at ``path``."""
    root = Path(path).expanduser().absolute()
    if (root / LOCK_FILE).is_file():
        os.close(_acquire_lock(root))


def _acquire_lock(root: Path) -> int:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise IndexBusyError(
            f"Another clipsearch process (pid {holder}) is writing to the index at {root}. "
            "Wait for it to finish, then run this command again. Searching works meanwhile."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _remove_index_files(root: Path) -> None:
    for name in _OWN_FILES[:-1]:
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    for entry in root.glob("vectors-*.faiss*"):
        entry.unlink()
    thumbs = root / "thumbnails"
    if thumbs.is_dir():
        shutil.rmtree(thumbs)
    from clipsearch.onnx_text import remove_text_encoders

    remove_text_encoders(root)
