"""The typer app: thin wrappers that parse, call the library (``api``), format output, phrase errors.

Heavy modules (torch, open_clip, faiss) are imported inside the commands, so ``--help`` stays fast.
stdout carries results only; progress, warnings and errors go to stderr. Environment variables
are read here, at the edge, and passed to the library as configuration. Library errors carry
facts; :func:`phrase` turns them into a message that names the command and flags to use next.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from clipsearch import __version__
from clipsearch.errors import (
    BadValueError,
    ClipsearchError,
    ClusterError,
    DeviceUnavailableError,
    FolderNotIndexedError,
    IndexBusyError,
    IndexCorruptError,
    IndexGoneError,
    IndexNotFoundError,
    MissingRootsError,
    ModelMismatchError,
    ModelUnavailableError,
    NoRootsError,
    NotARootError,
    RootInsideRootError,
    UsageError,
)

if TYPE_CHECKING:
    from clipsearch.encoders.cache import ModelCache


def _bare_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: show none in --help (typer would show ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """The app's command group: its own flags, and every command's, show no value in --help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _bare_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    name="clipsearch",
    help="Search your photos by text, by image, or both, with CLIP models, fully offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Search your photos by text, by image, or both, with CLIP models, fully offline."""


F = TypeVar("F", bound=Callable[..., Any])


def default_index_path() -> Path:
    """``$CLIPSEARCH_INDEX``, else the per-user data folder."""
    env = os.environ.get("CLIPSEARCH_INDEX")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("clipsearch")) / "index"


def index_path_from(option: Path | None) -> Path:
    """The index folder a command works on: ``--index``, else the default."""
    return (option or default_index_path()).expanduser().absolute()


def model_cache() -> ModelCache:
    """The per-machine model cache: ``$CLIPSEARCH_CACHE``, else the user's cache folder."""
    from clipsearch.encoders.cache import ModelCache

    configured = os.environ.get("CLIPSEARCH_CACHE")
    return ModelCache(Path(configured).expanduser()) if configured else ModelCache.default()


IndexOpt = Annotated[
    Path | None,
    typer.Option(
        "--index",
        help="Index folder. Default: $CLIPSEARCH_INDEX, else the user data folder (see `clipsearch info`).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output: one JSON object per line.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Model precision: fp32, bf16 (about 2x faster on CPUs with AVX-512 BF16), fp16 (on a GPU), "
        "or auto (fp16 on a GPU, bf16 where the CPU computes it natively, else fp32).",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the model runs: auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda.",
    ),
]


def err(message: str) -> None:
    """A line for the user on stderr."""
    typer.echo(message, err=True)


def echo_path(path: str, *, prefix: str = "", suffix: str = "", table: bool = False) -> None:
    """Print a path as the file system spells it, even when it is not valid UTF-8; in a ``table``
    (a line with other columns), control characters are escaped so a name cannot break the line."""
    from clipsearch.paths import for_terminal

    typer.echo(prefix.encode() + os.fsencode(for_terminal(path) if table else path) + suffix.encode())


#: Library parameter names whose command-line flag is not ``--name`` with dashes.
_FLAGS = {"k": "-k/--top"}


def flag(name: str) -> str:
    """The command-line flag of a library parameter name (``min_side`` -> ``--min-side``)."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def phrase(exc: ClipsearchError) -> str:
    """A library error as the CLI tells it: the facts, then the command or flag that helps."""
    from clipsearch.encoders.spec import MissingPretrainedError
    from clipsearch.ingest.sync import SyncInterrupted
    from clipsearch.query.evalset import NoJudgementsError
    from clipsearch.query.feedback import NoFeedbackError
    from clipsearch.query.grammar import EmptyQueryError, QuerySyntaxError
    from clipsearch.query.judgements import JudgedPathError

    if isinstance(exc, SyncInterrupted):
        if exc.report.rebuild:
            return (
                f"Interrupted. The rebuild so far is saved beside the index at {exc.report.index}, which "
                "searches still use; run the same command again to resume the rebuild."
            )
        return (
            f"Interrupted. The batches already done are saved in {exc.report.index}; "
            "run the same command again to resume."
        )
    if isinstance(exc, NotARootError):
        return (
            f"{exc.root} is not a folder of the index ({', '.join(exc.roots) or 'none'}); see them with: "
            f"clipsearch info --index {exc.index}. To leave out a folder inside one, use: "
            "clipsearch index ROOT --exclude PATTERN"
        )
    if isinstance(exc, RootInsideRootError):
        return (
            f"{exc.root} lies inside {exc.enclosing}, a folder of the index, whose settings apply to it. "
            f"Change them for the whole folder: clipsearch index {exc.enclosing} --exclude PATTERN ..."
        )
    if isinstance(exc, BadValueError):
        return f"{flag(exc.name)} {exc.value!r}: {exc.problem}."
    if isinstance(exc, DeviceUnavailableError):
        return (
            f"--device cuda: {exc.reason}. Run with --device cpu, or --device auto (a GPU where torch "
            "sees one, else the CPU)."
        )
    if isinstance(exc, FolderNotIndexedError):
        return f"--in {exc}" if not exc.missing else f"--in {exc} Check the folder's name."
    if isinstance(exc, NoRootsError):
        return f"No folders to index in {exc.index}. Give one or more: clipsearch index ~/Photos"
    if isinstance(exc, EmptyQueryError):
        return "Nothing to search for: give a query, or --image PATH (see clipsearch search --help)."
    if isinstance(exc, MissingPretrainedError):
        return (
            f"Model {exc.model} needs weights: pass --pretrained TAG (one of: {_tags(exc.model)}) "
            "or --pretrained /path/to/weights.safetensors."
        )
    hint = ""
    mark_them = "clipsearch judge QUERY --yes PATH... --no PATH..., or on the page (clipsearch serve)"
    if isinstance(exc, JudgedPathError):
        hint = {
            "missing": "Check the path.",
            "outside": "Index its folder first: clipsearch index FOLDER",
            "not-indexed": "Index it first: clipsearch index (it re-syncs the index's folders).",
            "skipped": "See the skipped files with: clipsearch info --skipped",
        }[exc.reason]
    elif isinstance(exc, NoJudgementsError):
        hint = f"Mark results first: {mark_them}; or give a JSONL file: clipsearch eval FILE"
    elif isinstance(exc, NoFeedbackError):
        hint = f"Mark some of its results first: {mark_them}."
    elif isinstance(exc, QuerySyntaxError):
        hint = "See `clipsearch search --help` for the query grammar."
    elif isinstance(exc, ModelMismatchError):
        hint = (
            "Re-run with --rebuild to re-index everything with the new model, or use --index to write "
            "a separate index."
        )
    elif isinstance(exc, IndexNotFoundError):
        hint = f"Create one with: clipsearch index PHOTO_FOLDER --index {exc.index}"
    elif isinstance(exc, IndexCorruptError):
        hint = (
            f"Re-create it with: clipsearch index --rebuild --index {exc.index}"
            if exc.rebuildable
            else "Choose another --index path."
        )
    elif isinstance(exc, IndexBusyError):
        hint = "Wait for it to finish, then run this command again. Searching works meanwhile."
    elif isinstance(exc, MissingRootsError):
        hint = (
            "Plug the drive in (or mount the folder) and run it again, or remove the folder from the "
            f"index first: clipsearch forget {exc.missing[0]} --index {exc.index}"
        )
    elif isinstance(exc, IndexGoneError):
        hint = "Run the command again to build the index anew."
    elif isinstance(exc, ClusterError):
        hint = (
            "Fix it and run the same command again, or run it without --ray to index on this machine alone."
        )
    elif isinstance(exc, ModelUnavailableError) and exc.repo:
        name = exc.model.split(" (")[0]
        hint = (
            f"From the command line: download {exc.filename} from https://huggingface.co/{exc.repo} "
            f"and pass it with --model {name} --pretrained /path/to/{exc.filename}; "
            "or try the bundled offline model: --model shapes"
        )
    return f"{exc}\n{hint}" if hint and "\n" in str(exc) else f"{exc} {hint}".strip()


def _tags(model: str) -> str:
    try:
        import open_clip

        return ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none known to open_clip"
    except Exception:  # only a hint
        return "see open_clip.list_pretrained_tags_by_model"


def handle_errors(fn: F) -> F:
    """Turn library exceptions into a message on stderr and the right exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClipsearchError as exc:
            report = getattr(exc, "report", None)
            if report is not None and kwargs.get("as_json"):
                typer.echo(json.dumps(report.to_dict()))
            message = phrase(exc)
            err(f"Error: {message}" if exc.exit_code != 130 else message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class StderrProgress:
    """A progress bar with images/s and ETA on stderr; silent when stderr is not a terminal."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int) -> None:
        if not sys.stderr.isatty() or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            task = self._progress.tasks[0]
            rate = f"{task.speed:.1f} img/s" if task.speed else ""
            self._progress.update(self._task, advance=n, rate=rate)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        err(message)


@app.command()
@handle_errors
def index(
    roots: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders (or files) to index. Default: re-sync every folder indexed before."),
    ] = None,
    index_path: IndexOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="open_clip model name (ViT-B-32, ...), hf-hub:org/repo, local-dir:/path, or 'shapes' "
            "(the bundled offline demo model). Default: the index's model, else ViT-B-32.",
            show_default=False,
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="open_clip pretrained tag (default laion2b_s34b_b79k for ViT-B-32) or a weights file path.",
            show_default=False,
        ),
    ] = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Re-index from scratch (the folders given, else every folder of the index), beside the "
            "index, which it replaces once complete; searches use the old one until then. Run it again "
            "to resume an interrupted rebuild.",
        ),
    ] = False,
    include_hidden: Annotated[
        bool | None,
        typer.Option(
            "--include-hidden/--no-include-hidden",
            help="Also index hidden files and folders (dot-names), or not. Recorded for the folders "
            "indexed. Default: as recorded, else not.",
            show_default=False,
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Leave out files/folders matching this gitignore-style pattern (repeatable). Replaces "
            "the patterns recorded for the folders indexed ('' clears them). Folders may also hold a "
            ".clipsearchignore file.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=1024,
            help="Images per encoder batch. Default: 32 on the CPU, 128 on a GPU.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Decoding processes (threads for under 64 files). Default: the number of CPU cores (at "
            "most 4 while the CPU also encodes).",
            show_default=False,
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-pixels",
            min=1,
            help="Skip images that would decode to more pixels than this (decompression-bomb guard; "
            "JPEGs count at their reduced decoding size). Recorded for the folders indexed; raising it "
            "retries the files skipped as too large. Default: as recorded, else 50,000,000.",
            show_default=False,
        ),
    ] = None,
    coverage: Annotated[
        str | None,
        typer.Option(
            "--coverage",
            help="For a new index (or --rebuild): 'sides' gives wide and tall pictures extra vectors for "
            "the parts a centre-cropping model (ViT-B-32, ...) does not see; 'none' one vector each. "
            "Default: sides where the model crops.",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="How vectors are stored and searched: auto (by size: sq8, exhaustive, up to 50,000 "
            "vectors; then ivfpq, approximate, sized by --memory-budget), flat, sq8 or ivfpq. Recorded "
            "in the index. Default: as recorded, else auto.",
            show_default=False,
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help="Memory an approximate index may keep for searching, e.g. 1G or 512M (the size of its "
            "codes follows). Recorded in the index. Default: as recorded, else 2G.",
            show_default=False,
        ),
    ] = None,
    decode_scale: Annotated[
        float | None,
        typer.Option(
            "--decode-scale",
            help="For a new index (or --rebuild): decode JPEGs reduced, straight from their DCT, to no "
            "less than this many times the model's input side: 1.5 (default: a 12-MP photo at 1/8), 2 "
            "(sharper fine patterns, a 12-MP photo at 1/4, ~10 ms more per photo) or 1. Default: as "
            "recorded (indexes made before this option: 2), else 1.5.",
            show_default=False,
        ),
    ] = None,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Read, decode and encode on Ray (pip install 'clipsearch\\[ray]'); the plan, the commits "
            "and the index stay here. 'local': a Ray started on this machine for the run; 'auto': the "
            "running cluster (RAY_ADDRESS, else the one last started on this machine); host:port or "
            "ray://host:port: that cluster. The folders must be at the same path on every node.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress bar or status lines (errors and warnings still show)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build or update an index: add new photos, re-encode changed ones, forget deleted ones."""
    import time

    from clipsearch.api import Index
    from clipsearch.encoders.device import describe_device, resolve_device
    from clipsearch.encoders.spec import parse_precision, resolve_precision
    from clipsearch.ingest.sync import SyncOptions
    from clipsearch.store.folder import check_not_busy, exists
    from clipsearch.store.maintain import parse_budget, parse_choice

    started = time.monotonic()
    budget = parse_budget(memory_budget) if memory_budget is not None else None
    if store is not None:
        parse_choice(store)
    path = index_path_from(index_path)
    missing = [str(r) for r in roots or () if not os.path.lexists(os.path.expanduser(r))]
    if missing:  # before any model is loaded or folder created
        raise UsageError(
            f"No such file or folder: {', '.join(missing)}. Give existing folders (an unplugged drive "
            "must be mounted first); with no folder, every folder indexed before is re-synced."
        )
    run_precision = parse_precision(precision)
    ray_options = _ray_options(ray)
    run_device = resolve_device(device)  # a GPU asked for and absent: a usage error, before any work
    resolve_precision(run_precision, run_device)  # fp16 on the CPU: the same
    given = {"batch_size": batch_size, "workers": workers}
    options = SyncOptions.for_device(  # checks the --exclude patterns
        run_device,
        include_hidden=include_hidden,
        exclude=None if exclude is None else tuple(exclude),
        max_pixels=max_pixels,
        passive_wait=os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE",
        **{key: value for key, value in given.items() if value},
    )
    if not quiet and ray_options is None:  # on Ray, each actor says where it encodes
        note = " (torch sees no GPU)" if device == "auto" and run_device == "cpu" else ""
        err(f"Encoding on {describe_device(run_device)}{note}, {options.workers} decoding workers")
    spec = _spec_for_index(path, model, pretrained, rebuild)
    check_not_busy(path)  # before the slow part: the lock is taken for real by open_for_write
    if not quiet and (rebuild or not exists(path)):
        err(f"Loading model {spec.label()} ...")  # a new index needs the model up front; else on demand
    if not quiet:
        err(f"Writing index {path}")
    with Index.open_for_write(
        path,
        spec=spec,
        precision=run_precision,
        rebuild=rebuild,
        cache=model_cache(),
        coverage=coverage,
        decode_scale=decode_scale,
        device=run_device,
        encode_here=ray_options is None,
    ) as idx:
        if not quiet and idx.folder.rebuilding:
            err(f"Rebuilding in {idx.folder.data}; searches use the index as it was until it is done.")
        if store is not None or budget is not None:
            idx.set_store(store, budget)
        progress = None if quiet else StderrProgress("Indexing")
        # Ray prints its messages (a lost node, a task retried) to stdout, which carries results only
        with contextlib.redirect_stdout(sys.stderr) if ray_options else contextlib.nullcontext():
            report = idx.sync(
                [str(r) for r in roots] if roots else None,
                options=options,
                progress=progress,
                ray=ray_options,
            )
    report.seconds = round(time.monotonic() - started, 3)  # what the user waited for, model load included
    if not quiet and report.nodes:
        nodes = report.nodes.items()
        err(
            "Ray nodes: " + "; ".join(f"{k} read {n['read']} files, encoded {n['encoded']}" for k, n in nodes)
        )
    for warning in report.warnings:
        err(f"Warning: {warning}")
    if report.text_export == "unavailable":
        err(f"Note: searches of this index will load the full model ({report.text_export_reason}).")
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    for root in report.missing_roots:
        err(f"Warning: {root} is missing (unmounted?); its entries were kept.")
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(report.skip_reasons.items()))
    typer.echo(
        f"{'Rebuilt' if report.rebuild else 'Indexed'} in {report.seconds:.1f}s: {report.added} added, "
        f"{report.updated} updated, "
        f"{report.reused} reused, {report.removed} removed, {report.unchanged} unchanged, "
        f"{report.skipped} skipped{f' ({reasons})' if reasons else ''}.\nIndex: {report.index}"
    )
    if report.videos:
        from clipsearch.query.rank import format_time

        typer.echo(
            f"Videos: {report.videos} new, {format_time(report.video_seconds)} long in all, "
            f"{report.moments} moments."
        )
    if report.skipped:
        err("See which files were skipped and why with: clipsearch info --skipped")


def _ray_options(address: str | None) -> Any:
    """The RayOptions of ``--ray [ADDRESS]`` (None without it); Ray must be installed."""
    if address is None:
        return None
    from clipsearch.ingest.ray_engine import RayOptions, import_ray

    if address not in ("local", "auto") and ":" not in address:
        raise UsageError(
            f"--ray {address}: give the Ray cluster's address: local (a Ray started for this run), auto "
            "(the running cluster), host:port or ray://host:port."
        )
    # Ray's C++ core logs that Ray Data's actors could not be restarted should their constructor's
    # arguments be lost: they are held for the whole run; node losses are still reported
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import_ray()  # before any work: say now that it is missing
    return RayOptions(address=None if address == "local" else address)


def _spec_for_index(path: Path, model: str | None, pretrained: str | None, rebuild: bool) -> Any:
    """The model to index with: as asked, else the one the existing index records, else the default."""
    from clipsearch.api import check_index_model, recorded_spec
    from clipsearch.encoders.spec import ModelSpec

    if model is None and pretrained is None:
        try:
            recorded = recorded_spec(path)
        except IndexCorruptError:
            if not rebuild:
                raise
            recorded = None  # a damaged index being re-created: the default model
        if recorded is not None:
            return recorded
    spec = ModelSpec.parse(model, pretrained)
    if not rebuild:
        check_index_model(path, spec)
    return spec


SEARCH_HELP = """Search the index by text, by image, or by both; best matches first.

Filters (--in, --after, --before, --type, --min-side, --available) apply before the top-k cut.
A video's hits are its moments (path @ start–end); --per-file 1 keeps its best one.

{grammar}

Examples:
  clipsearch search "a red car at night"
  clipsearch search --image ./cat.jpg -k 20
  clipsearch search "a beach at sunset" --add dog --sub people --image ./ref.jpg
  clipsearch search "beach + dog:0.5 - people" --in ~/Photos/2019 --after 2019-06 --json
  clipsearch search --image ./frame.png --type mp4,mov --per-file 1
"""


def _search_help() -> str:
    from clipsearch.query.grammar import GRAMMAR

    return SEARCH_HELP.format(grammar=GRAMMAR)


@app.command(help=_search_help())
@handle_errors
def search(
    query: Annotated[
        str | None,
        typer.Argument(help="The query: text, image paths, + and - (grammar below).", show_default=False),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            "-i",
            help="Add an image file's look (indexed or not; repeatable; PATH:0.5 weights).",
            show_default=False,
        ),
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option("--add", help="Add a text term (repeatable; 'dog:0.5' weights it).", show_default=False),
    ] = None,
    sub: Annotated[
        list[str] | None,
        typer.Option(
            "--sub", help="Subtract a text term (repeatable; weights as --add).", show_default=False
        ),
    ] = None,
    sub_image: Annotated[
        list[str] | None,
        typer.Option("--sub-image", help="Subtract an image's look (repeatable).", show_default=False),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-k",
            min=1,
            max=100_000,
            help="How many results (default 10; the cap for --cutoff auto, default 100).",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Only results scoring at least this (cosine, -1..1).", show_default=False
        ),
    ] = None,
    cutoff: Annotated[
        str | None,
        typer.Option(
            "--cutoff",
            help="'auto': keep the results above the cutoff fitted to the index's judgements (with "
            "enough of them), else above where this query's scores break off; 'break': always the latter.",
            show_default=False,
        ),
    ] = None,
    refine: Annotated[
        bool,
        typer.Option(
            "--refine",
            help="Move the query towards the results marked right and away from those marked wrong "
            "(clipsearch judge, or the page), and show the marks.",
        ),
    ] = False,
    in_folder: Annotated[
        Path | None,
        typer.Option(
            "--in", help="Only files under this folder (inside an indexed folder).", show_default=False
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Only files dated on or after this day: YYYY[-MM[-DD]] (EXIF date, else mtime).",
            show_default=False,
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help="Only files dated before this day: YYYY[-MM[-DD]].", show_default=False
        ),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option(
            "--type", help="Only these file types, comma-separated: jpg,png,heic...", show_default=False
        ),
    ] = None,
    min_side: Annotated[
        int | None,
        typer.Option(
            "--min-side",
            min=1,
            help="Only images whose shorter side has at least this many pixels.",
            show_default=False,
        ),
    ] = None,
    available: Annotated[
        bool,
        typer.Option(
            "--available",
            help="Only files on disk now (leave out those of an unplugged drive; they are marked otherwise).",
        ),
    ] = False,
    sort: Annotated[
        str, typer.Option("--sort", help="Order of the results: score or date (newest first).")
    ] = "score",
    per_file: Annotated[
        int | None,
        typer.Option(
            "--per-file",
            min=1,
            help="Keep at most this many moments of each video (its best). Default: every moment that ranks.",
            show_default=False,
        ),
    ] = None,
    index_path: IndexOpt = None,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    paths: Annotated[
        bool, typer.Option("--paths", help="Print only paths, one per line (also on a terminal).")
    ] = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="Print only paths, each ended by a NUL byte (for xargs -0).")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained HTML gallery of the results to this file.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from clipsearch.api import Index
    from clipsearch.encoders.device import resolve_device
    from clipsearch.encoders.spec import parse_precision
    from clipsearch.query.filters import parse_filters
    from clipsearch.query.grammar import build_terms, describe
    from clipsearch.query.rank import SearchOptions, finish, moment_span

    if html is not None:
        _check_gallery_target(html)  # before the model loads and the search runs
    terms = build_terms(query, images=image or [], add=add or [], sub=sub or [], sub_images=sub_image or [])
    options = SearchOptions.parse(top=top, threshold=threshold, cutoff=cutoff, sort=sort, per_file=per_file)
    filters = parse_filters(
        folder=str(in_folder) if in_folder else None,
        after=after,
        before=before,
        types=types,
        min_side=min_side,
        available=available,
    )
    path = index_path_from(index_path)
    marks: dict[int, bool] = {}
    if device != "auto":  # checked now (no torch import without a GPU); auto resolves when a model loads
        device = resolve_device(device)
    with Index.open(path, precision=parse_precision(precision), cache=model_cache(), device=device) as idx:
        fitted = None
        if all(t.kind == "text" for t in terms):  # fitted on text queries: images score on another scale
            options, fitted = idx.calibrate(options)
        if fitted is not None:
            err(f"Cutoff: {_fitted_note(fitted)}; --cutoff break ignores them.")
        if refine:
            marks = {m.content_id: m.relevant for m in idx.judgements(terms) if m.content_id is not None}
        search_with = idx.search_refined if refine else idx.search
        hits = finish(
            search_with(terms, options.candidates, filters=filters, per_file=options.per_file), options
        )
        empty = not hits and idx.catalog.is_empty()  # counting a large catalog costs (0.3 s at 10M)
    if html is not None:
        from clipsearch.web.gallery import write_gallery

        write_gallery(html, describe(terms), hits)
        err(f"Wrote gallery {html.absolute()}")
    if as_json:
        for rank_no, hit in enumerate(hits, 1):
            judged = {"judged": marks.get(hit.content_id)} if refine else {}
            typer.echo(json.dumps({"rank": rank_no, **hit.to_dict(), **judged}))
    elif null:
        for hit in hits:
            typer.echo(os.fsencode(hit.path) + b"\0", nl=False)
    elif sys.stdout.isatty() and not paths:
        for rank_no, hit in enumerate(hits, 1):
            mark = (f" @ {moment_span(hit)}" if hit.is_moment else "") + (
                "" if hit.available else "  [not on disk]"
            )
            judged = f"{_MARK_WORDS[marks.get(hit.content_id)]:<3}  " if refine else ""
            echo_path(hit.path, prefix=f"{rank_no:>4}  {hit.score:6.3f}  {judged}", suffix=mark, table=True)
        if any(not hit.available for hit in hits):
            err("Some files are not on disk now (an unplugged drive?); --available leaves them out.")
    else:
        for hit in hits:
            echo_path(hit.path)
    if not hits:
        err(
            f"No results: the index at {path} is empty. Add photos with: clipsearch index FOLDER"
            if empty
            else "No results match the filters or the threshold."
        )


_MARK_WORDS = {True: "yes", False: "no", None: ""}


def _fitted_note(fitted: Any) -> str:
    """The cutoff fitted to the judgements, in words."""
    return (
        f"scores >= {fitted.threshold:.3f}, fitted to {fitted.judgements} judgements of "
        f"{len(fitted.queries)} queries (F1 {fitted.f1:.2f} on them)"
    )


def _check_gallery_target(target: Path) -> None:
    """The gallery's file must be a file name in an existing folder."""
    if target.is_dir():
        raise BadValueError(
            "html", str(target), f"is a folder; give a file name, e.g. {target / 'results.html'}"
        )
    folder = target.absolute().parent
    if not folder.is_dir():
        raise BadValueError("html", str(target), f"the folder {folder} does not exist; create it first")


@app.command()
@handle_errors
def info(
    index_path: IndexOpt = None,
    skipped: Annotated[
        bool, typer.Option("--skipped", help="List each skipped file with its reason.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what is in the index, which model built it, and where it lives."""
    from clipsearch.paths import for_terminal, json_fields, json_list
    from clipsearch.query.rank import format_time
    from clipsearch.store.folder import IndexFolder

    with IndexFolder.open(index_path_from(index_path)) as folder:
        data = folder.info()
        skipped_files = folder.catalog.skipped() if skipped else []
    if skipped:
        for file_path, reason in skipped_files:
            if as_json:
                typer.echo(json.dumps({**json_fields(file_path), "reason": reason}))
            else:
                echo_path(file_path, prefix=f"{for_terminal(reason)}\t", table=True)
        return
    if as_json:
        typer.echo(json.dumps(data | json_fields(data["index"], "index") | json_list(data["roots"], "roots")))
        return
    model = f"{data['model']} ({data['pretrained']})" if data["pretrained"] else data["model"]
    roots = "\n          ".join(f"{r['path']}{_settings_note(r)}" for r in data["root_settings"]) or "-"
    text = (
        f"Index:    {data['index']}\n"
        f"Model:    {model}, {data['dim']}-d, weights sha256 {data['weights_sha256'][:16]}\n"
        f"Images:   {data['count']} files, {data['contents']} distinct, {data['skipped']} skipped; "
        f"{data['vectors']} vectors (coverage: {data['coverage']}); JPEGs decoded at "
        f"≥ {data['decode_scale']:g}× the model's input\n"
        f"Vectors:  {_store_line(data)}\n"
        + (
            f"Videos:   {data['videos']} files, {data['moments']} moments, "
            f"{format_time(data['video_seconds'])} in all\n"
            if data["videos"]
            else ""
        )
        + f"Roots:    {roots}\n"
        f"On disk:  {data['size_bytes'] / 1e6:.2f} MB"
    )
    typer.echo(os.fsencode(text))  # paths as the file system spells them, even when not UTF-8
    staged = data["rebuild"]
    if staged is not None:
        label = f"{staged['model']} ({staged['pretrained']})" if staged["pretrained"] else staged["model"]
        typer.echo(f"Rebuild:  unfinished, {staged['count']} files so far with {label}")
        err(f"Resume the rebuild with: clipsearch index --rebuild --index {data['index']}")


def _store_line(data: dict[str, Any]) -> str:
    """The vectors' kind, parameters, measured recall and bytes, for `info`."""
    kind, params, per = data["store"], data["store_params"], data["bytes_per_vector"]
    segments = f"{data['segments']} segment{'s' if data['segments'] != 1 else ''}"
    choice = "" if data["store_choice"] == "auto" else f", chosen with --store {data['store_choice']}"
    if kind == "ivfpq" and "nprobe" in params:
        recall = data["recall_at_10"]
        filtered = data["filtered_recall_at_10"]
        return (
            f"ivfpq, approximate ({params['nlist']} cells, {params['m']}-byte codes, "
            f"{params['nprobe']} cells visited, best {params['rerank']} re-ranked per 10); "
            f"recall@10 {recall:.3f} ({filtered:.3f} with a 10% filter) measured at "
            f"{data['recall_measured_at']:,} vectors; "
            f"{segments}; {per['search']:.0f} B/vector searched, {per['codes']:.0f} B/vector of codes "
            f"kept for re-ranking{choice}"
        )
    how = {"flat": "exhaustive, 32-bit floats", "sq8": "exhaustive, 8 bits per dimension"}.get(kind, "")
    return f"{kind}{f', {how}' if how else ''}; {segments}; {per['search']:.0f} B/vector{choice}"


def _settings_note(root: dict[str, Any]) -> str:
    """A root's settings for `info`, where they are not the defaults."""
    notes = []
    if root["exclude"]:
        notes.append("exclude " + ", ".join(root["exclude"]))
    if root["include_hidden"]:
        notes.append("hidden files included")
    if root["max_pixels"] is not None:
        notes.append(f"max {root['max_pixels']:,} pixels")
    return f"  ({'; '.join(notes)})" if notes else ""


@app.command()
@handle_errors
def forget(
    roots: Annotated[
        list[Path],
        typer.Argument(help="Folders (or files) the index records, as `clipsearch info` lists them."),
    ],
    index_path: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove folders from the index: their entries, settings, and the vectors no other file uses."""
    from clipsearch.api import Index

    path = index_path_from(index_path)
    with Index.open_for_write(path, cache=model_cache()) as idx:
        for root in roots:
            folder = os.path.abspath(os.path.expanduser(root))
            removed = idx.forget(folder)
            if as_json:
                typer.echo(json.dumps({"forgotten": folder, "removed": removed, "index": str(path)}))
            else:
                typer.echo(b"Forgot " + os.fsencode(folder) + f": {removed} files removed.".encode())


@app.command()
@handle_errors
def duplicates(
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="Cosine similarity from which two different files count as near-duplicates.",
        ),
    ] = 0.95,
    exact_only: Annotated[bool, typer.Option("--exact", help="Only files with identical bytes.")] = False,
    index_path: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List groups of duplicate photos: identical files, and near-duplicates above --threshold."""
    import math

    from clipsearch.query.duplicates import find_duplicates
    from clipsearch.store.folder import IndexFolder

    with IndexFolder.open(index_path_from(index_path)) as folder:
        groups = find_duplicates(folder, threshold=threshold, near=not exact_only)
    for group in groups:
        if as_json:
            typer.echo(json.dumps(group.to_dict()))
            continue
        if group.kind == "exact":
            typer.echo(f"exact ({len(group.paths)} identical files):")
            for file_path in group.paths:
                echo_path(file_path, prefix="  ", table=True)
            continue
        marks = {i: _letters(n) for n, same in enumerate(group.identical) for i in same}
        legend = "; the same letter marks identical files" if marks else ""
        floor = math.floor(group.min_score * 1000) / 1000  # rounding up could overstate it
        typer.echo(f"near ({len(group.paths)} files, similarity >= {floor:.3f}{legend}):")
        for i, file_path in enumerate(group.paths):
            echo_path(file_path, prefix=f"  {marks.get(i, ''):<2} " if marks else "  ", table=True)
    if not groups:
        err("No duplicates found.")


def _letters(n: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: labels for the sets of identical files in a group."""
    label = ""
    n += 1
    while n:
        n, rest = divmod(n - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


# -- judgements and evaluation --------------------------------------------------------------------

_MARK_FLAGS = {"--yes": True, "--no": False, "--clear": None}


def _marked_paths(items: list[str]) -> dict[bool | None, list[str]]:
    """``--yes A B --no C --clear D`` -> {True: [A, B], False: [C], None: [D]}."""
    out: dict[bool | None, list[str]] = {}
    label: bool | str | None = "unset"
    for item in items:
        if item in _MARK_FLAGS:
            label = _MARK_FLAGS[item]
            out.setdefault(label, [])
        elif item.startswith("--"):
            raise UsageError(f"Unknown option {item}: mark paths with --yes, --no or --clear.")
        elif label == "unset":
            raise UsageError(f"Say what {item} is: put --yes (relevant), --no or --clear before the paths.")
        else:
            out[label].append(item)  # type: ignore[index]
    empty = [flag for flag, value in _MARK_FLAGS.items() if value in out and not out[value]]
    if empty or not out:
        raise UsageError(f"{empty[0] if empty else '--yes or --no'} needs one or more paths.")
    return out


@app.command(context_settings={"ignore_unknown_options": True})
@handle_errors
def judge(
    query: Annotated[str, typer.Argument(help="The query the marks are for (text or a query expression).")],
    marks: Annotated[
        list[str],
        typer.Argument(
            metavar="[--yes PATH...] [--no PATH...] [--clear PATH...]",
            help="--yes: these files are right for the query; --no: they are not; --clear: forget their "
            "marks. Files must be indexed (one on an unplugged drive counts).",
            show_default=False,
        ),
    ],
    index_path: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark files right or wrong for a query: for --refine, the fitted --cutoff auto, and eval."""
    from clipsearch.api import Index
    from clipsearch.query.judgements import query_key

    groups = _marked_paths(marks)
    key = query_key(query)  # a malformed query fails before the index is opened
    with Index.open(index_path_from(index_path), cache=model_cache()) as idx:
        counts = idx.mark_many(key, groups)
        total = len(idx.judgements(key))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "query": key,
                    "relevant": counts.get(True, 0),
                    "irrelevant": counts.get(False, 0),
                    "cleared": counts.get(None, 0),
                    "marks": total,
                }
            )
        )
        return
    done = [
        f"{counts[label]} {word}"
        for label, word in ((True, "right"), (False, "wrong"), (None, "cleared"))
        if label in counts
    ]
    typer.echo(f"Marked {', '.join(done)} for {key!r}; it has {total} marks now.")


@app.command()
@handle_errors
def judgements(
    query: Annotated[
        str | None,
        typer.Option("--query", help="Only the marks of this query.", show_default=False),
    ] = None,
    index_path: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the stored marks (query, right or wrong, file); --json exports them."""
    from datetime import datetime, timezone

    from clipsearch.api import Index
    from clipsearch.paths import json_fields

    with Index.open(index_path_from(index_path), cache=model_cache()) as idx:
        rows = idx.judgements(query)
        ids = sorted({m.content_id for m in rows if m.content_id is not None})
        files = idx.catalog.entries_of(ids)
    for mark in rows:
        paths = [e.path for e in files.get(mark.content_id, [])] if mark.content_id is not None else []
        if as_json:
            when = datetime.fromtimestamp(mark.time, timezone.utc).isoformat(timespec="seconds")
            where = json_fields(paths[0]) if paths else {"path": None}
            typer.echo(
                json.dumps(
                    {
                        "query": mark.query,
                        "relevant": mark.relevant,
                        **where,
                        "content_id": mark.content_id,
                        "hash": mark.hash,
                        "time": when,
                    }
                )
            )
        else:
            word = "yes" if mark.relevant else "no "
            shown = paths[0] if paths else f"(not in the index now: content {mark.hash[:12]})"
            echo_path(shown, prefix=f"{word}  {_cell(mark.query, 32)}  ", table=True)
    if not rows:
        err(
            "No judgements yet. Mark results with: clipsearch judge QUERY --yes PATH... --no PATH..., "
            "or on the page (clipsearch serve)."
        )


def _cell(text: str, width: int) -> str:
    """``text`` in a column of ``width`` characters: escaped, cut with an ellipsis, padded."""
    from clipsearch.paths import for_terminal

    text = for_terminal(text)
    return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)


_HEADINGS = {
    "p@10": "p@10",
    "r@10": "r@10",
    "ndcg@10": "nDCG@10",
    "mrr": "MRR",
    "precision": "prec",
    "recall": "recall",
    "f1": "F1",
    "new p@10": "new p@10",
}


@app.command(name="eval")
@handle_errors
def eval_(
    file: Annotated[
        Path | None,
        typer.Argument(
            help='JSONL of queries and their relevant files: {"query": "...", "relevant": ["path", '
            '"*pattern*"]} per line. Default: the judgements stored in the index.',
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-k",
            min=1,
            max=100_000,
            help="Results kept per query, as search's -k.",
            show_default=False,
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="Keep results scoring at least this, as search's.", show_default=False
        ),
    ] = None,
    cutoff: Annotated[
        str | None,
        typer.Option("--cutoff", help="'auto' or 'break', as search's.", show_default=False),
    ] = None,
    refine: Annotated[
        bool, typer.Option("--refine", help="Refine each query with its marks first, as search's.")
    ] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="A setting to compare (repeatable): cutoffs, precision, refine or store (each a set of "
            "settings), or key=value pairs joined by commas: k, threshold, cutoff, refine=yes|no, "
            "precision=fp32|bf16, index=PATH (another model over the same photos), store=exact|approximate "
            "(the preset store is both), name.",
            show_default=False,
        ),
    ] = None,
    index_path: IndexOpt = None,
    precision: PrecisionOpt = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output: one JSON object (queries and mean).")
    ] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write an HTML report: per-query numbers and thumbnails of the misses.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Score the search on your own judgements (or a JSONL file): precision, recall, nDCG, MRR, F1."""
    from clipsearch.api import Index
    from clipsearch.encoders.spec import parse_precision
    from clipsearch.query.evalset import read_eval_file
    from clipsearch.query.measure import Setting, parse_settings

    if html is not None:
        _check_gallery_target(html)
    base = Setting(k=top, threshold=threshold, cutoff=cutoff, refine=refine)
    base.options()  # checks the values before anything is read
    settings = [s for spec in compare or [] for s in parse_settings(spec, base)] or [base]
    evalset = read_eval_file(file) if file is not None else None
    path = index_path_from(index_path)
    with Index.open(path, precision=parse_precision(precision), cache=model_cache()) as idx:
        reports = idx.evaluate(evalset, settings)
    for report in reports:
        if report.cutoff is not None:
            held = "none of these queries" if report.held_out else "SOME OF THESE QUERIES: not held out"
            err(f"{report.name}: cutoff {_fitted_note(report.cutoff)}; fitted on {held}.")
        if report.skipped:
            err(
                f"{report.name}: {len(report.skipped)} queries have no relevant file in that index, left out."
            )
    if html is not None:
        from clipsearch.web.report import write_report

        write_report(html, evalset.source if evalset else "judgements", reports)
        err(f"Wrote report {html.absolute()}")
    if as_json:
        objects = [r.to_dict() for r in reports]
        typer.echo(json.dumps({"settings": objects} if compare else objects[0]))
        return
    keys = list(reports[0].mean())
    if compare:
        typer.echo(f"{'setting':<28}" + "".join(f"{_HEADINGS[k]:>9}" for k in keys))
        for report in reports:
            typer.echo(_cell(report.name, 28) + "".join(f"{report.mean()[k]:9.3f}" for k in keys))
        return
    report = reports[0]
    typer.echo(f"{'query':<34}{'rel':>5}{'kept':>5}" + "".join(f"{_HEADINGS[k]:>9}" for k in keys))
    for result in report.results:
        sc = result.score
        typer.echo(
            f"{_cell(sc.query, 34)}{sc.relevant:>5}{sc.returned:>5}"
            + "".join(f"{sc.scores[k]:9.3f}" for k in keys)
        )
    typer.echo(
        f"{_cell(f'mean of {len(report.results)} queries', 44)}"
        + "".join(f"{report.mean()[k]:9.3f}" for k in keys)
    )


@app.command()
@handle_errors
def serve(
    index_path: IndexOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback is warned about.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 8000,
    device: DeviceOpt = "auto",
) -> None:
    """Serve a local web page to search the index (text, upload an image, more like this)."""
    from clipsearch.encoders.device import describe_device, resolve_device
    from clipsearch.web.server import serve as run_server

    run_device = resolve_device(device)
    note = " (torch sees no GPU)" if device == "auto" and run_device == "cpu" else ""
    err(f"The model runs on {describe_device(run_device)}{note}.")
    run_server(index_path_from(index_path), host=host, port=port, cache=model_cache(), device=run_device)


@app.command()
@handle_errors
def demo(
    folder: Annotated[
        Path, typer.Argument(help="Folder for the generated demo images (created; reused when it exists).")
    ] = Path("clipsearch-demo"),
    index_path: Annotated[
        Path | None,
        typer.Option(
            "--index",
            help="Index folder for the demo. Default: FOLDER/../<FOLDER name>-index.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", min=20, max=100_000, help="How many images to generate.")
    ] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated images.")] = 2026,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=100, help="Results shown per query.")] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate shape images, index them with the bundled 'shapes' model, and run checked queries."""
    from clipsearch.demo import run_demo

    folder = folder.expanduser().absolute()
    path = (index_path or folder.with_name(folder.name + "-index")).expanduser().absolute()
    report, results = run_demo(
        folder,
        path,
        n=count,
        seed=seed,
        k=top,
        progress=None if quiet else StderrProgress("Indexing"),
        say=err,
        cache=model_cache(),
    )
    if as_json:
        for result in results:
            typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo(
        f"Indexed {folder}: {report.added} added, {report.reused} reused, {report.unchanged} unchanged "
        f"in {report.seconds:.1f}s.\nIndex: {report.index}\n"
    )
    for result in results:
        typer.echo(
            f"{result.query.kind:>7} {result.query.description}: {sum(result.right)}/{len(result.hits)} right"
        )
        for rank_no, (hit, ok) in enumerate(zip(result.hits, result.right, strict=True), 1):
            typer.echo(
                f"   {rank_no:>2}  {hit.score:6.3f}  {'right' if ok else 'WRONG'}  {Path(hit.path).name}"
            )
    right = sum(sum(r.right) for r in results)
    total = sum(len(r.hits) for r in results)
    typer.echo(f"\nOverall {right}/{total} results right. Try your own query:")
    typer.echo(f'  clipsearch search "a small purple cross" --index {path}')


def main() -> None:
    """Console-script entry point.

    Sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set, and keeps Triton from being imported. Once
    the command is done, its exit handlers run and its output is flushed, the process ends with
    ``os._exit``: the interpreter's and torch's teardown that it skips cost 0.7 s and a ~120 MB
    burst of memory at the end of every command that imported torch.
    """
    import atexit

    # torch's OpenMP threads sleep while they wait instead of spinning (read when torch loads): beside
    # the decoding workers, spinning threads burn the cores the workers need (see SyncOptions)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # this process compiles no kernels: keep Triton out (torchvision's import brings in
    # torch._dynamo, which imports Triton where installed: 75 MB of memory and 0.5 s)
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)  # "triton not found"
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    atexit._run_exitfuncs()  # what a normal exit runs first (multiprocessing's clean-up, logging)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (| head) must not change the exit code
            stream.flush()
    os._exit(code)
