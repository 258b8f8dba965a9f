"""The local web page and its JSON API: a thin FastAPI layer over the same library calls as the CLI.

Every search goes through ``Index.search`` / ``Index.search_vectors`` and ``finish``; files are only
ever reached through a content id looked up in the catalog, never through a path sent by the client.
"""

import contextlib
import copy
import hashlib
import io
import ipaddress
import os
import re
import signal
import socket
import sqlite3
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch.api import Index
from clipsearch.encoders.cache import ModelCache
from clipsearch.encoders.images import DEFAULT_MAX_PIXELS, image_format, open_image
from clipsearch.encoders.video import frame_at
from clipsearch.errors import BadValueError, ClipsearchError, ImageError, IndexAccessError, UsageError
from clipsearch.files import write_atomic
from clipsearch.paths import json_fields, json_list
from clipsearch.query.filters import Filters, parse_filters
from clipsearch.query.grammar import QuerySyntaxError, Term, parse_query
from clipsearch.query.judgements import query_key
from clipsearch.query.rank import Hit, SearchOptions, finish
from clipsearch.query.vector import image_vector
from clipsearch.store.catalog import View
from clipsearch.store.folder import CATALOG_FILE

#: Host names a loopback-bound server answers to (anything else is a DNS-rebinding attempt).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Decompression-bomb guard for uploads, the same limit ingestion uses.
UPLOAD_MAX_PIXELS = DEFAULT_MAX_PIXELS
#: Images decoded at once, as many as the indexer's default decoding workers: each may take up to
#: about 10 bytes a pixel of ``UPLOAD_MAX_PIXELS`` (500 MB), however many requests arrive.
DEFAULT_DECODE_SLOTS = max(1, min(4, os.cpu_count() or 1))
THUMB_SIZES = (256, 512)
MAX_K = 1000
STATIC_DIR = Path(__file__).parent / "static"

_ID = re.compile(r"[0-9]{1,18}")  # below 2**63: SQLite and FAISS ids are signed 64-bit
_MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and part headers
_WEB_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
#: Media types of the video containers indexed, by extension (browsers play what they can).
_VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
}
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class Result(BaseModel):
    """One search result; ``thumb`` and ``image`` are the URLs of its pictures.

    ``path`` shows U+FFFD where a name is not valid UTF-8; ``path_bytes`` (only then) holds the
    exact bytes in base64. ``date`` is ISO 8601 in UTC. A video's result is one of its moments:
    ``t_start`` and ``t_end`` (seconds), ``moment`` (its number, for thumbnails and "more like this")
    and ``video`` (the URL of the video file, to play from ``t_start``); ``thumb`` and ``image`` show
    the moment's first frame.
    """

    rank: int
    path: str
    path_bytes: str | None = None
    score: float
    content_id: int
    size: int
    width: int
    height: int
    date: str
    available: bool
    thumb: str
    image: str
    t_start: float | None = None
    t_end: float | None = None
    moment: int | None = None
    video: str | None = None
    #: text searches: the mark of this picture for the query (true: right, false: wrong, null: none)
    judged: bool | None = None


class Cutoff(BaseModel):
    """The fitted cutoff a ``cutoff=auto`` text search used (see ``clipsearch judge``)."""

    threshold: float
    f1: float
    judgements: int
    queries: int


class Results(BaseModel):
    """Search results; ``index_version`` names the index their ids belong to (see the ``v`` parameter).

    Text searches also give ``key`` (the query as its marks are stored), ``marks`` (how many of its
    pictures are marked) and ``refined``; ``cutoff`` when a fitted cutoff was used."""

    query: str
    count: int
    index_version: str
    results: list[Result]
    key: str | None = None
    marks: int | None = None
    refined: bool | None = None
    cutoff: Cutoff | None = None


class Mark(BaseModel):
    """A mark from the page: picture ``content_id`` is right (true) or wrong (false) for query ``q``
    (null: forget its mark). ``v``: the index_version of the answer the id came from."""

    q: str = Field(max_length=2000)
    content_id: int = Field(ge=0, le=2**63 - 1)
    relevant: bool | None
    v: str | None = Field(default=None, max_length=64)


class Marked(BaseModel):
    """The query as its marks are stored, the picture's mark now, and how many the query has."""

    key: str
    content_id: int
    relevant: bool | None
    marks: int


class ErrorBody(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 409, 413, 415, 422, 503)
}
#: Results leave out the fields they do not need (``path_bytes`` for a name that is valid UTF-8).
_SPARSE: dict[str, Any] = {"response_model_exclude_unset": True}
_PICTURE = _ERRORS | {200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The picture."}}


@dataclass
class _State:
    index: Index  # read and replaced only under ``lock``, through _current()
    lock: threading.Lock  # one SQLite connection and one FAISS store: one request at a time
    thumbs: Path
    max_upload_bytes: int
    #: held from decoding an image until it is shrunk or encoded (uploads, thumbnails, conversions)
    decode_slots: threading.BoundedSemaphore
    identity: tuple[int, int] = (0, 0)  # (device, inode) of the catalog file ``index`` has open

    @property
    def version(self) -> str:
        """Names the index the ids in answers belong to: a rebuild (recorded in the catalog) or a new
        catalog file (the folder re-created) changes it."""
        key = f"{self.identity[0]}:{self.identity[1]}:{self.index.folder.rebuild_id}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]


def _catalog_identity(index_path: Path) -> tuple[int, int]:
    """(device, inode) of the index's catalog file now.

    Raises:
        IndexAccessError: there is none (the folder was removed, or a rebuild is replacing it).
    """
    try:
        st = os.stat(index_path / CATALOG_FILE)
    except OSError as exc:
        raise IndexAccessError(
            index_path,
            f"The index at {index_path} cannot be read now ({exc.strerror or exc}): it was removed, or "
            "is being replaced. Try again in a moment; if it stays so, restart clipsearch serve.",
        ) from None
    return st.st_dev, st.st_ino


def _current(state: _State) -> Index:
    """The index to answer from (call holding ``state.lock``), never the one a rebuild replaced:
    reopened when its catalog file was replaced (the folder re-created), and following a rebuild
    swapped into the catalog (``clipsearch index --rebuild``)."""
    identity = _catalog_identity(state.index.path)
    if identity != state.identity:
        state.index = state.index.reopen()
        state.identity = identity
    state.index.follow_rebuild()
    return state.index


def _check_version(state: _State, version: str | None) -> None:
    """Refuse an id the page took from answers of an index that was replaced since (409)."""
    if version is not None and version != state.version:
        raise HTTPException(
            409,
            "The index was rebuilt since these results were shown, so their ids name other pictures "
            "now. Search again.",
        )


Moment = Annotated[
    int | None,
    Query(ge=0, le=65535, description="A video's moment, as its results give it (default: its main one)."),
]
Version = Annotated[
    str | None,
    Query(
        alias="v",
        max_length=64,
        description="The index_version of the answer the id came from (409 if the index was rebuilt since).",
    ),
]


# -- request parameters ---------------------------------------------------------------------------


def search_params(
    k: Annotated[int | None, Query(ge=1, le=MAX_K, description="How many results (default 10).")] = None,
    folder: Annotated[
        str | None, Query(alias="in", max_length=4096, description="Only files under this absolute folder.")
    ] = None,
    after: Annotated[str | None, Query(max_length=64, description="Dated on/after YYYY[-MM[-DD]].")] = None,
    before: Annotated[str | None, Query(max_length=64, description="Dated before YYYY[-MM[-DD]].")] = None,
    types: Annotated[
        str | None, Query(alias="type", max_length=256, description="File types, e.g. jpg,png.")
    ] = None,
    min_side: Annotated[int | None, Query(ge=1, le=1_000_000, description="Shorter side at least.")] = None,
    available: Annotated[
        bool, Query(description="Only files on disk now (not those of an unplugged drive).")
    ] = False,
    threshold: Annotated[float | None, Query(description="Only scores at least this (-1..1).")] = None,
    cutoff: Annotated[str | None, Query(max_length=16, description="'auto': adaptive cutoff.")] = None,
    sort: Annotated[str, Query(max_length=16, description="score or date (newest first).")] = "score",
    per_file: Annotated[
        int | None, Query(ge=1, le=MAX_K, description="Most moments of one video (default: all that rank).")
    ] = None,
) -> tuple[Filters, SearchOptions]:
    """The CLI's filters and result options, validated by the library."""
    options = SearchOptions.parse(
        top=k, threshold=threshold, cutoff=cutoff or None, sort=sort, per_file=per_file
    )
    if folder and not folder.startswith("/"):
        raise BadValueError("in", folder, "give an absolute folder path inside an indexed folder")
    filters = parse_filters(
        folder=folder, after=after, before=before, types=types, min_side=min_side, available=available
    )
    return filters, options


SearchParams = Annotated[tuple[Filters, SearchOptions], Depends(search_params)]


def text_terms(query: str) -> list[Term]:
    """Parse a web query; image paths are refused, so no client string ever reaches the file system."""
    terms = parse_query(query)
    for term in terms:
        if term.kind == "image":
            raise UsageError(
                f"Image paths are not accepted by the web API ({term.value!r}). Use 'more like this' "
                "on a result, or upload the image, to search by an image."
            )
    return terms


def parse_id(text: str) -> int:
    """A content id from a URL segment; anything else is simply not found."""
    if not _ID.fullmatch(text):
        raise HTTPException(404, "No image with this id in the index.")
    return int(text)


# -- the app --------------------------------------------------------------------------------------


def create_app(
    index_path: Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    thumbnail_dir: Path | None = None,
    allowed_hosts: Iterable[str] | None = LOCAL_HOSTS,
    cache: ModelCache | None = None,
    decode_slots: int = DEFAULT_DECODE_SLOTS,
    device: str = "cpu",
) -> FastAPI:
    """The web app for the index at ``index_path``.

    Args:
        index_path: an existing index folder (opened read-only; its model loads on the first search).
        max_upload_bytes: largest image accepted by ``POST /api/search/image`` (larger: 413).
        thumbnail_dir: where thumbnails are cached (default ``<index>/thumbnails``).
        allowed_hosts: ``Host`` header names answered (DNS-rebinding guard); None answers any.
        cache: the per-machine model cache (default: the user's cache folder).
        decode_slots: most images decoded at once (uploads, thumbnails, conversions); more wait.
        device: where the model runs (``cpu``, ``cuda`` or ``auto``; see :meth:`Index.open`).

    Raises:
        IndexNotFoundError, IndexCorruptError: as :meth:`Index.open`.
    """
    index = Index.open(index_path, cache=cache, device=device)
    state = _State(
        index,
        threading.Lock(),
        thumbnail_dir or index.path / "thumbnails",
        max_upload_bytes,
        threading.BoundedSemaphore(decode_slots),
    )
    try:
        state.identity = _catalog_identity(index.path)
    except BaseException:
        index.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with state.lock:
            state.index.close()

    app = FastAPI(
        title="clipsearch",
        summary="Search a local photo index by text or by image.",
        version="1",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.clipsearch = state
    _add_guards(app, None if allowed_hosts is None else {h.lower() for h in allowed_hosts})
    _add_error_handlers(app)
    _add_api(app, state)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _add_api(app: FastAPI, state: _State) -> None:
    route = app.get

    @route("/api/search", response_model=Results, responses=_ERRORS, tags=["search"], **_SPARSE)
    def search_text(
        q: Annotated[str, Query(max_length=2000, description="A query in the CLI's grammar (text terms).")],
        params: SearchParams,
        refine: Annotated[
            bool, Query(description="Move the query by its marks (right: towards, wrong: away) first.")
        ] = False,
    ) -> dict[str, Any]:
        """Images matching a text query: terms joined by + and -, weighted (``beach + dog:0.5 - people``).

        Each result carries its mark for this query (``judged``); ``refine=true`` searches with the
        query moved by its marks (400 when none of its pictures is marked)."""
        filters, options = params
        terms = text_terms(q)
        with state.lock:
            index = _current(state)
            options, fitted = index.calibrate(options)
            search = index.search_refined if refine else index.search
            hits = search(terms, options.candidates, filters=filters, per_file=options.per_file)
            marks = {m.content_id: m.relevant for m in index.judgements(terms) if m.content_id is not None}
            answer = _results(q, finish(hits, options), state.version)
        for result in answer["results"]:
            result["judged"] = marks.get(result["content_id"])
        answer |= {"key": query_key(terms), "marks": len(marks), "refined": refine}
        return answer | ({"cutoff": fitted.to_dict()} if fitted is not None else {})

    @app.post("/api/judge", response_model=Marked, responses=_ERRORS, tags=["judgements"])
    def judge(mark: Mark) -> dict[str, Any]:
        """Mark a result of a text query right or wrong (or forget its mark), by its content id."""
        terms = text_terms(mark.q)
        with state.lock:
            index = _current(state)
            _check_version(state, mark.v)
            if not index.catalog.entries_of([mark.content_id]):
                raise HTTPException(404, "No image with this id in the index.")
            index.mark(terms, relevant=mark.relevant, content_ids=[mark.content_id])
            count = sum(m.content_id is not None for m in index.judgements(terms))
        return {
            "key": query_key(terms),
            "content_id": mark.content_id,
            "relevant": mark.relevant,
            "marks": count,
        }

    @route("/api/similar/{content_id}", response_model=Results, responses=_ERRORS, tags=["search"], **_SPARSE)
    def similar(
        content_id: str, params: SearchParams, v: Version = None, moment: Moment = None
    ) -> dict[str, Any]:
        """More like this: images (and moments of videos) similar to an indexed image, itself left out,
        by its content id; for a video, similar to one of its moments (``moment``, default the video's
        main one), that moment left out."""
        filters, options = params
        cid = parse_id(content_id)
        with state.lock:
            index = _current(state)
            _check_version(state, v)
            own = index.catalog.entries_of([cid]).get(cid)
            if not own:
                raise HTTPException(404, "No image with this id in the index.")
            video = _moment_of(index.catalog.views_of([cid]).get(cid), moment)
            number = video.view if video is not None else 0
            try:
                vector = index.folder.content_vector(cid, number)
            except RuntimeError:  # deleted by a sync since the catalog lookup
                raise HTTPException(404, "No image with this id in the index.") from None
            hits = index.search_vectors(
                vector, options.candidates + len(own), filters=filters, per_file=options.per_file
            )[0]
            kept = [h for h in hits if h.content_id != cid or (video is not None and h.moment != number)]
            query = f"#{cid}" if video is None else f"#{cid} @ {video.t_start:g}s"
            return _results(query, finish(kept, options), state.version)

    @app.post(
        "/api/search/image",
        response_model=Results,
        responses=_ERRORS,
        tags=["search"],
        openapi_extra=_UPLOAD_BODY,
        **_SPARSE,
    )
    async def search_upload(request: Request, params: SearchParams) -> dict[str, Any]:
        """Images similar to an uploaded image (multipart field ``file``; kept in memory only)."""
        data = await read_upload(request, state.max_upload_bytes)
        return await run_in_threadpool(_search_image_bytes, state, data, *params)

    @route("/api/info", responses=_ERRORS, tags=["index"])
    def info() -> dict[str, Any]:
        """What is in the index and which model built it."""
        with state.lock:
            index = _current(state)
            try:
                data = index.info()
            except OSError as exc:  # the folder went away between the check and the listing
                raise IndexAccessError(
                    index.path, f"The index at {index.path} cannot be read now ({exc})."
                ) from None
            version = state.version
        data |= json_fields(data["index"], "index") | json_list(data["roots"], "roots")
        extra = {"max_upload_bytes": state.max_upload_bytes, "thumb_sizes": list(THUMB_SIZES)}
        return data | extra | {"index_version": version}

    @route("/api/thumb/{content_id}", response_class=Response, responses=_PICTURE, tags=["files"])
    def thumb(
        content_id: str,
        size: Annotated[int, Query(description=f"One of {THUMB_SIZES}.")] = THUMB_SIZES[0],
        v: Version = None,
        moment: Moment = None,
    ) -> Response:
        """A JPEG thumbnail (EXIF orientation applied), made on first request and cached next to the
        index; of a video, the first frame of a moment (``moment``, default its main one)."""
        if size not in THUMB_SIZES:
            raise UsageError(f"size {size}: thumbnails come in sizes {', '.join(map(str, THUMB_SIZES))}.")
        path, st, at = _servable_file(state, parse_id(content_id), v, moment)
        cached = state.thumbs / _thumb_name(path, st, size, at)
        if not cached.is_file():
            with state.decode_slots:
                data = _thumbnail(path, size, at)
            if not _write_atomic(cached, data):  # a read-only index: serve it uncached
                return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})
        return FileResponse(cached, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @route("/api/image/{content_id}", response_class=Response, responses=_PICTURE, tags=["files"])
    def image(content_id: str, v: Version = None, moment: Moment = None) -> Response:
        """The full-size image: the file itself if browsers show its format, else converted to JPEG;
        of a video, a JPEG of the first frame of a moment (``moment``, default its main one)."""
        path, _, at = _servable_file(state, parse_id(content_id), v, moment)
        media_type = None if at is not None else _web_type(path)
        if media_type is None:
            with state.decode_slots:
                data = _jpeg(_decode(path, at=at), quality=90)
            return Response(data, media_type="image/jpeg")
        name = os.fsencode(os.path.basename(path)).decode("utf-8", "replace")
        return FileResponse(
            path,
            media_type=media_type,
            filename=name,
            content_disposition_type="inline",
            headers={"Cache-Control": "no-cache"},
        )

    @route(
        "/api/video/{content_id}",
        response_class=Response,
        responses=_ERRORS
        | {200: {"content": {"video/mp4": {}, "video/webm": {}}}, 206: {"description": "A range."}},
        tags=["files"],
    )
    def video(content_id: str, v: Version = None) -> Response:
        """An indexed video file as it is, for the page's player; answers HTTP range requests (206), so
        playing can start at a moment."""
        return _video_response(state, parse_id(content_id), v)


def _moment_of(views: dict[int, View] | None, moment: int | None) -> View | None:
    """A video's moment (None: its main one) from its views; None for a picture; 404 for a moment
    that is not there."""
    moments = {n: v for n, v in (views or {}).items() if v.kind == "moment"}
    if not moments:
        if moment is not None:
            raise HTTPException(404, "This id is not a video's: it has no moments.")
        return None
    found = moments.get(moment or 0)
    if found is None:
        raise HTTPException(404, "The video has no such moment.")
    return found


def _video_response(state: _State, content_id: int, version: str | None) -> Response:
    path, _, at = _servable_file(state, content_id, version)
    if at is None:
        raise HTTPException(404, "This id is not a video's.")
    name = os.fsencode(os.path.basename(path)).decode("utf-8", "replace")
    return FileResponse(  # answers Range requests (206), so the player can start at a moment
        path,
        media_type=_VIDEO_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream"),
        filename=name,
        content_disposition_type="inline",
        headers={"Cache-Control": "no-cache"},
    )


def _search_image_bytes(
    state: _State, data: bytes, filters: Filters, options: SearchOptions
) -> dict[str, Any]:
    with state.lock:
        side = _current(state).decode_side
    with state.decode_slots:  # the full-size image lives until it is encoded: in the slot
        try:  # decoded as indexing decodes, so an uploaded copy of an indexed photo scores 1.0
            img = open_image(data, max_pixels=UPLOAD_MAX_PIXELS, min_side=side)
        except ImageError as exc:
            raise ImageError(exc.reason, f"The uploaded file cannot be used: {exc.detail}.") from None
        with state.lock:
            vector = image_vector(_current(state), img)
        del img
    with state.lock:
        hits = _current(state).search_vectors(
            vector, options.candidates, filters=filters, per_file=options.per_file
        )
        return _results("uploaded image", finish(hits[0], options), state.version)


def _results(query: str, hits: list[Hit], version: str) -> dict[str, Any]:
    results = []
    for rank_no, hit in enumerate(hits, 1):
        moment = f"&moment={hit.moment}" if hit.is_moment else ""
        item = hit.to_dict() | {
            "rank": rank_no,
            "thumb": f"/api/thumb/{hit.content_id}?v={version}{moment}",
            "image": f"/api/image/{hit.content_id}?v={version}{moment}",
        }
        if hit.is_moment:
            item["video"] = f"/api/video/{hit.content_id}?v={version}"
        results.append(item)
    return {"query": query, "count": len(results), "index_version": version, "results": results}


# -- files ----------------------------------------------------------------------------------------


def _servable_file(
    state: _State, content_id: int, version: str | None, moment: int | None = None
) -> tuple[str, os.stat_result, float | None]:
    """A file holding this content that is the very file indexed (same size and modification time,
    symlinks followed, wherever it lies), with its ``stat`` and, for a video, the start of the moment
    asked for (its main one by default); else 404 (409: ``version`` is stale)."""
    with state.lock:
        catalog = _current(state).catalog
        _check_version(state, version)
        files = catalog.entries_of([content_id]).get(content_id, [])
        indexed = [(hit.path, catalog.file(hit.path)) for hit in files]
        at = _moment_of(catalog.views_of([content_id]).get(content_id), moment) if indexed else None
    if not indexed:
        raise HTTPException(404, "No image with this id in the index.")
    return (*_on_disk(indexed), None if at is None else at.t_start)


def _on_disk(indexed: list[tuple[str, Any]]) -> tuple[str, os.stat_result]:
    """The first of these (path, catalog row) that is on disk as it was indexed; else 404."""
    for path, row in indexed:
        try:
            st = os.stat(path)
        except OSError:
            continue
        # a file changed or replaced (by a symlink to a file elsewhere, say) since it was indexed is
        # not what the index vouches for
        if row is not None and stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == row[:2]:
            return os.path.realpath(path), st
    raise HTTPException(
        404,
        "No file of this image is on disk as it was indexed (unplugged, deleted or changed since). "
        "Run clipsearch index to refresh the index.",
    )


def _thumb_name(path: str, st: os.stat_result, side: int, at: float | None = None) -> str:
    """A thumbnail's cache name, from the file it shows (not its content id, which a rebuilt index
    gives to another picture), and the time of a video's frame: a changed or other file never gets
    a stale thumbnail."""
    key = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{at}"
    return f"{hashlib.sha256(key.encode(errors='surrogateescape')).hexdigest()[:32]}-{side}.jpg"


def _decode(path: str, side: int | None = None, *, at: float | None = None) -> Any:
    """The picture of an indexed file, or the frame of an indexed video at ``at`` seconds."""
    try:
        if at is not None:
            return frame_at(path, at, max_pixels=UPLOAD_MAX_PIXELS, side=side)
        return open_image(path, max_pixels=UPLOAD_MAX_PIXELS, min_side=side)
    except ImageError as exc:
        raise HTTPException(
            404, f"The file cannot be read any more ({exc}). Run clipsearch index to refresh the index."
        ) from None


def _thumbnail(path: str, side: int, at: float | None = None) -> bytes:
    img = _decode(path, side, at=at)
    img.thumbnail((side, side))
    return _jpeg(img, quality=82)


def _jpeg(img: Any, *, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _web_type(path: str) -> str | None:
    """The media type of a file browsers display as is, from its content (not its name)."""
    return _WEB_TYPES.get(image_format(path) or "")


def _write_atomic(target: Path, data: bytes) -> bool:
    """Write via a unique temp file and rename, so readers never see half a thumbnail."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
    except OSError:
        return False
    return True


# -- uploads --------------------------------------------------------------------------------------


async def read_upload(request: Request, limit: int) -> bytes:
    """The ``file`` field of a multipart body, read into memory and never onto disk; 413 over ``limit``."""
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(415, "Send the image as multipart/form-data in a field named 'file'.")
    too_large = HTTPException(413, f"The upload is larger than the limit of {limit:,} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit + _MULTIPART_SLACK:
            raise too_large
    data = _multipart_field(bytes(body), options[b"boundary"], b"file")
    if data is None:
        raise HTTPException(400, "The form has no field named 'file'. Upload the image as 'file'.")
    if len(data) > limit:
        raise too_large
    return data


def _multipart_field(body: bytes, boundary: bytes, name: bytes) -> bytes | None:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    found: dict[bytes, bytearray] = {}
    part: dict[str, Any] = {}

    def on_part_begin() -> None:
        part.update(field=b"", value=b"", headers={}, data=bytearray())

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_part_end() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        found.setdefault(disposition.get(b"name", b""), part["data"])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": lambda d, s, e: part.update(field=part["field"] + d[s:e]),
        "on_header_value": lambda d, s, e: part.update(value=part["value"] + d[s:e]),
        "on_header_end": on_header_end,
        "on_part_data": lambda d, s, e: part["data"].extend(d[s:e]),
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise HTTPException(400, f"The multipart body is malformed: {exc}") from None
    data = found.get(name)
    return None if data is None else bytes(data)


# -- errors and guards ----------------------------------------------------------------------------


def status_for(exc: ClipsearchError) -> int:
    """HTTP status of a library error: the request's fault (4xx) or the server's state (503)."""
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, ImageError):
        return 422
    return 503


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClipsearchError)
    async def library_error(_: Request, exc: ClipsearchError) -> JSONResponse:
        if isinstance(exc, ImageError):
            return _error(status_for(exc), exc.detail, reason=exc.reason)
        extra = {"position": exc.position + 1} if isinstance(exc, QuerySyntaxError) else {}
        return _error(status_for(exc), str(exc), **extra)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        ]
        return _error(422, "; ".join(problems) or "Invalid request.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(sqlite3.Error)
    async def catalog_error(_: Request, exc: sqlite3.Error) -> JSONResponse:
        return _error(503, f"The index catalog cannot be read ({exc}). Restart clipsearch serve.")


_HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\s:/@\[\]]*))(?::[0-9]{1,5})?")


def _host_name(header: str) -> str | None:
    """The host of a ``Host`` header, lower case (``[::1]:8000`` -> ``::1``); None when malformed
    (``[``, ``[::1``, ``host:port:x``...)."""
    match = _HOST_HEADER.fullmatch(header)
    return None if match is None else (match["ip6"] or match["name"]).lower()


def _add_guards(app: FastAPI, allowed_hosts: set[str] | None) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if allowed_hosts is not None and _host_name(request.headers.get("host", "")) not in allowed_hosts:
            response: Response = _error(
                400, "Unexpected Host header: open the page at http://127.0.0.1:PORT/."
            )
        else:
            response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if not request.url.path.startswith(("/docs", "/openapi.json")):  # Swagger UI needs its CDN
            response.headers["Content-Security-Policy"] = _CSP
        return response


# -- running --------------------------------------------------------------------------------------


def is_local_host(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port).

    Raises:
        BadValueError: the host (not this machine's) or the port (in use, no permission) cannot be used.
    """
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = found[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError, OverflowError) as exc:
        raise BadValueError("host", host, f"cannot serve on {host}:{port} ({exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise BadValueError(
            "port", port, f"cannot serve on {host}:{port} ({exc.strerror or exc}); choose another port"
        ) from None
    return sock


def _log_config() -> dict[str, Any]:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout carries results only
    return config


def serve(
    index_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    cache: ModelCache | None = None,
    device: str = "cpu",
) -> None:
    """Serve the search page and its API until interrupted (Ctrl+C); messages go to stderr.

    Args:
        index_path: the index folder to search.
        host: interface to listen on; anything but a loopback address exposes every indexed photo.
        port: TCP port (0: any free port).
        cache: the per-machine model cache (default: the user's cache folder).
        device: where the model runs (``cpu``, ``cuda`` or ``auto``).

    Raises:
        IndexNotFoundError, IndexCorruptError: no usable index at ``index_path``.
        ModelUnavailableError, ModelMismatchError: the index's model cannot be loaded.
        UsageError: the host/port cannot be used.
    """
    import uvicorn

    local = is_local_host(host)
    app = create_app(
        index_path, allowed_hosts=[*LOCAL_HOSTS, host] if local else None, cache=cache, device=device
    )
    state: _State = app.state.clipsearch
    try:
        sock = bind(host, port)  # before loading the model: a port in use fails at once
    except BaseException:
        state.index.close()
        raise
    try:
        # Text queries go through the model's exported text encoder when this machine has it: no
        # torch in the process (about 0.75 GB less memory, a start in a second); the image tower then
        # loads at the first image query. Without the export the model loads now, so that a missing
        # model fails here and not at the first search.
        sys.stderr.write(f"Loading the model of {state.index.path} ({state.index.meta.model})...\n")
        _ = state.index.text_encoder
        if not state.index.encoder_loaded:
            sys.stderr.write(
                f"Text queries use the exported text encoder of {state.index.meta.model}; its image "
                "tower loads at the first image query.\n"
            )
    except BaseException:
        sock.close()
        state.index.close()
        raise
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    if not local:
        sys.stderr.write(
            f"Warning: listening on {host}, which other machines can reach. Anyone who can connect can "
            "search and view every indexed photo; there is no login. Use --host 127.0.0.1 unless you "
            "mean to share it.\n"
        )
    config = uvicorn.Config(app, log_config=_log_config(), server_header=False, lifespan="on")
    path = state.index.path
    sys.stderr.write(f"Serving {path} at {url} (press Ctrl+C to stop)\n")
    with _stopping_is_the_normal_end():
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
    sys.stderr.write(f"Stopped serving {path}.\n")


@contextlib.contextmanager
def _stopping_is_the_normal_end() -> Iterator[None]:
    """Ctrl+C and SIGTERM stop the server (uvicorn's handlers), then end ``serve`` normally.

    uvicorn re-raises the signal it stopped on once it has shut down: with the default handlers
    SIGINT would become a KeyboardInterrupt and SIGTERM would kill the process (exit -15) before
    any clean-up. These handlers take that re-raised signal instead.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
