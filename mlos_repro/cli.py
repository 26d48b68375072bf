"""The command line: parse, call the library, map errors to exit codes. Only this module exits."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mlos_repro import __version__, ui
from mlos_repro.errors import EnvironmentProblem, ExitCode, MlosReproError

if TYPE_CHECKING:
    from mlos_repro.store import Store

F = TypeVar("F", bound=Callable[..., Any])


def _handle_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except MlosReproError as e:
            _fail(e.message, e.hint, e.exit_code, as_json)
        except BrokenPipeError:
            # Whoever read our output went away (e.g. `| head`): not a failure of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except KeyboardInterrupt:
            _fail("interrupted; the store holds only complete entries", None, 130, as_json)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except OSError as e:
            problem = EnvironmentProblem.from_os_error(e, None if e.filename else _written(kwargs))
            if problem is None:
                _internal_error(as_json)
            _fail(problem.message, problem.hint, problem.exit_code, as_json)
        except Exception:
            _internal_error(as_json)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, hint: str | None, code: int, as_json: bool) -> NoReturn:
    """Say what went wrong on stderr (and, with --json, as {"error", "hint", "exit"} on stdout); exit."""
    ui.error(message, hint)
    if as_json:
        ui.emit_json({"error": message, "hint": hint, "exit": int(code)})
    sys.exit(int(code))


def _written(kwargs: dict[str, Any]) -> str | None:
    """Where a command writes, for an error that names no file (a full disk while writing)."""
    from mlos_repro.store import default_root

    places = []
    if "store_dir" in kwargs:
        places.append(f"the store {kwargs['store_dir'] or default_root()}")
    if kwargs.get("out_dir") is not None:
        places.append(f"--out {kwargs['out_dir']}")
    return " or ".join(places) or None


def _internal_error(as_json: bool = False) -> NoReturn:
    _fail("internal error:\n" + traceback.format_exc(),
          "this is a bug in mlos-repro; please report it with the text above", ExitCode.INTERNAL, as_json)


# Options of the whole tool, accepted before the command or anywhere after it (`build -v`).
GLOBAL_FLAGS = frozenset({"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet", "--color", "--no-color"})


class _Tool(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        head, sep, tail = (args[:args.index("--")], ["--"], args[args.index("--") + 1:]) if "--" in args \
            else (args, [], [])
        flags = [a for a in head if a in GLOBAL_FLAGS]
        return super().parse_args(ctx, [*flags, *(a for a in head if a not in GLOBAL_FLAGS), *sep, *tail])


recipes_option = click.option(
    "--recipes", "recipes_dir", type=click.Path(path_type=Path), default=Path("recipes"),
    show_default=True, help="Directory holding builder.toml, builder.lock and *.toml stage recipes.")
store_option = click.option(
    "--store", "store_dir", type=click.Path(path_type=Path), default=None,
    help="Content-addressed store [default: $MLOS_REPRO_STORE or $XDG_CACHE_HOME/mlos-repro]; for `build`, "
         "also oci://HOST/REPO: an OCI registry shared by several machines (docs/cluster.md).")
mirror_option = click.option(
    "--mirror", default=None,
    help="Debian mirror to use instead of the one in builder.toml (e.g. a snapshot.debian.org URL).")
class _ProfileOption(click.Option):
    """--profile, whose help lists the profiles of ./recipes/builder.toml when there is one."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        import tomllib

        try:
            with open("recipes/builder.toml", "rb") as f:
                profiles = [str(p) for p in tomllib.load(f).get("profiles", [])]
        except (OSError, ValueError):
            profiles = []
        if profiles:
            self.help = (f"Recipe profile: {profiles[0]} (the default)"
                         + "".join(f", {p}" for p in profiles[1:]) + " (from recipes/builder.toml).")
        return super().get_help_record(ctx)


profile_option = click.option(
    "--profile", cls=_ProfileOption, default=None, metavar="NAME",
    help="Recipe profile: one of those builder.toml lists (the first is the default).")


def executor_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--executor local|dask and --scheduler: where the stages run (mlos_repro/cluster.py)."""
    f = click.option("--scheduler", default=None, envvar="MLOS_REPRO_SCHEDULER", metavar="tcp://HOST:PORT",
                     help="With --executor dask: the Dask scheduler whose workers run the stages "
                          "[default: $MLOS_REPRO_SCHEDULER, or a cluster on this machine, one worker "
                          "per core].")(f)
    return click.option("--executor", "executor_kind", type=click.Choice(["local", "dask"]), default="local",
                        show_default=True,
                        help="Run the stages here one after another, or on a Dask cluster (the same "
                             "outputs; independent stages run at once).")(f)


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print a machine-readable result on stdout.")


def _store(store_dir: Path | None) -> Store:
    from mlos_repro.errors import BadInputError

    store, shared = _stores(store_dir)
    if shared is not None:
        raise BadInputError(f"--store {shared}: only `build` uses a shared OCI store",
                            "name the local store (the shared store's copy is the default one)")
    return store


def _stores(store_dir: Path | None) -> tuple[Store, str | None]:
    """The local store, and the shared OCI store's URL when --store (or MLOS_REPRO_STORE) names
    one (oci://HOST/REPO): then the local store is the default one, the shared store's copy."""
    from mlos_repro.store import Store, default_root

    given = str(store_dir) if store_dir is not None else os.environ.get("MLOS_REPRO_STORE", "")
    if not given.startswith("oci:/"):
        return Store(store_dir or default_root()), None
    shared = "oci://" + given.removeprefix("oci:").lstrip("/")  # a click Path folds the '//'
    local = os.environ.get("MLOS_REPRO_STORE", "")
    return Store(Path(local) if local and not local.startswith("oci:") else _xdg_store()), shared


def _xdg_store() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlos-repro"


@click.group(cls=_Tool, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlos-repro")
@click.option("-v", "--verbose", count=True,
              help="Show the tail of a running stage's log and what is done (-v), and every command "
                   "run and details (-vv), on stderr. Accepted after the command too, like -q and --color.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings, errors and results.")
@click.option("--color/--no-color", default=None,
              help="Colour on stderr [default: on a terminal, unless NO_COLOR is set].")
def main(verbose: int, quiet: bool, color: bool | None) -> None:
    """Build MLOS Linux bit for bit from pinned inputs, and verify it offline.

    \b
    Typical use:
      mlos-repro lock      # resolve recipes/builder.toml into recipes/builder.lock
      mlos-repro fetch     # download every pinned input into the store
      mlos-repro build     # build every stage offline, in a sandbox, into ./out

    Exit codes: 0 ok, 1 verification failed, 2 bad input, 3 missing tool,
    4 a stage failed, 5 signing or key problem, 70 internal error.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)
    if verbose == 1:
        logging.getLogger("mlos_repro.run").setLevel(logging.WARNING)  # every command: -vv
    ui.configure(verbose, quiet, color)


@main.command()
@click.argument("stages", nargs=-1)
@recipes_option
@profile_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="Where OUT/<stage>/<output> and OUT/manifest.json are written.")
@store_option
@click.option("--no-cache", is_flag=True, help="Run every selected stage even if the store has it.")
@click.option("--partial", is_flag=True,
              help="Building fewer stages than the earlier build in OUT: keep its other stages "
                   "(without it, such a build is refused).")
@click.option("--sandbox", "sandbox_name", type=click.Choice(["bwrap", "podman"]), default="bwrap",
              show_default=True, help="Sandbox backend; both give identical outputs.")
@executor_options
@click.option("--cache-key", "cache_keys", type=click.Path(path_type=Path), multiple=True, metavar="FILE",
              help="With --store oci://: a public key (a builder.pub.json) whose signed stage entries "
                   "in the shared store are used; repeat for several.")
@click.option("--cache-threshold", default=1, show_default=True, metavar="K",
              help="With --store oci://: use a shared entry only when K distinct trusted keys signed "
                   "the same outputs for it; otherwise build the stage.")
@click.option("--sign-cache", "sign_cache", type=click.Path(path_type=Path), default=None, metavar="DIR",
              envvar="MLOS_REPRO_SIGN_CACHE",
              help="With --store oci://: a `keys init` directory whose builder key signs the stage "
                   "entries this build writes to the shared store [default: write none].")
@click.option("--verify", is_flag=True,
              help="Rebuild every selected stage, uncached, in a varied environment; compare every "
                   "output and write OUT/verify.json and OUT/reports/. Exit 1 if anything differs.")
@click.option("--bisect", is_flag=True,
              help="With --verify: build each stage whose output differs with no variation's trace in "
                   "it again with one variation at a time, and name those under which it differs alone.")
@click.option("--vary", "vary_spec", default=None, metavar="SPEC",
              help="Variations for --verify, reprotest style: e.g. '-time,-fileordering' turns "
                   "those off, '-all,+umask' only varies the umask. Default: all.")
@click.option("--diffoscope-timeout", default=300.0, show_default=True, metavar="SECONDS",
              help="Time limit of one diffoscope run in --verify reports.")
@click.option("--diffoscope-max-size", default=256 << 20, show_default=True, metavar="BYTES",
              help="Differing members larger than this are reported by digest only.")
@click.option("--gnupghome", type=click.Path(path_type=Path), default=None, envvar="MLOS_REPRO_GNUPGHOME",
              help="GnuPG home holding the archive key that signs APT repositories "
                   "[default: a development key, made on first use; not for release].")
@click.option("--archive-key", default=None, metavar="KEYID",
              help="Which secret key of --gnupghome signs (needed when it holds several).")
@json_option
@_handle_errors
def build(stages: tuple[str, ...], recipes_dir: Path, profile: str | None, out_dir: Path,
          store_dir: Path | None, no_cache: bool, partial: bool, sandbox_name: str, executor_kind: str,
          scheduler: str | None, cache_keys: tuple[Path, ...], cache_threshold: int, sign_cache: Path | None,
          verify: bool,
          bisect: bool, vary_spec: str | None,
          diffoscope_timeout: float, diffoscope_max_size: int, gnupghome: Path | None,
          archive_key: str | None, as_json: bool) -> None:
    """Build STAGES (default: all) and their dependencies, offline, in the sandbox.

    Cached stages are taken from the store; each stage's log is kept there.
    Writes OUT/<stage>/<output> and OUT/manifest.json. APT repositories are signed outside
    the sandbox (InRelease, Release.gpg, the exported keyring). With --verify, every stage is
    built a second time with the variations listed by --vary and judged bit for bit.

    \b
    Example:
      mlos-repro build                 # every stage of the default profile into ./out
      mlos-repro build --verify -v     # and judge each output against a varied second build
      mlos-repro build iso --partial   # the ISO and what it needs, keeping out/'s other stages
      mlos-repro build --executor dask # independent stages at once, one Dask worker per core
    """
    from mlos_repro import pipelines
    from mlos_repro.inspect.report import DiffoscopeSettings
    from mlos_repro.rebuild.variations import parse_vary

    enabled = parse_vary(vary_spec)
    if (vary_spec is not None or bisect) and not verify:
        raise click.UsageError("--vary and --bisect apply to --verify only")
    if archive_key is not None and gnupghome is None:
        raise click.UsageError("--archive-key needs --gnupghome (the GnuPG home holding it)")
    options = pipelines.BuildOptions(recipes_dir=recipes_dir, stages=stages, profile=profile, out_dir=out_dir,
                                     sandbox=sandbox_name, use_cache=not no_cache, gnupghome=gnupghome,
                                     archive_key=archive_key, partial=partial, executor=executor_kind,
                                     scheduler=scheduler)
    store, shared_url = _stores(store_dir)
    if shared_url is not None:
        from mlos_repro.oci import SharedConfig

        options = replace(options, shared=SharedConfig(shared_url, cache_keys, cache_threshold, sign_cache))
    elif cache_keys or sign_cache or cache_threshold != 1:
        raise click.UsageError("--cache-key, --cache-threshold and --sign-cache apply to --store oci:// only")
    built = pipelines.build(options, store, progress=ui.progress, warn=ui.warn)
    if not as_json:
        stages_built = built.result.stages.values()
        fresh = sum(1 for r in stages_built if not r.cached)
        cached = len(stages_built) - fresh
        ui.info(f"{ui.count(len(stages_built), 'stage')} ({fresh} built, {cached} cached); "
                f"manifest: {built.manifest}")
    if verify:
        settings = DiffoscopeSettings(diffoscope_timeout, diffoscope_max_size)
        checked = pipelines.verify_build(built, enabled, settings, on_plan=ui.variations, bisect=bisect)
        if not as_json:
            ui.verdicts(checked)
    if as_json:
        ui.emit_json(built.summary())
    if built.verified is not None and not built.verified.reproducible:
        sys.exit(int(ExitCode.VERIFICATION_FAILED))

@main.command("plan")
@click.argument("stages", nargs=-1)
@recipes_option
@profile_option
@store_option
@click.option("--no-cache", is_flag=True, help="As `build --no-cache` would: every selected stage runs.")
@json_option
@_handle_errors
def plan_cmd(stages: tuple[str, ...], recipes_dir: Path, profile: str | None, store_dir: Path | None,
             no_cache: bool, as_json: bool) -> None:
    """What `build STAGES` would do: each stage cached or to run, and why it runs.

    Nothing is built or assembled. A stage runs when the store has no build of its inputs;
    plan says what changed since it was last built on this store (a recipe key, an input, the
    environment, mlos-repro itself), or that it needs a stage that runs first.

    \b
    Example:
      mlos-repro plan              # the whole graph
      mlos-repro plan iso --json   # the ISO and what it needs, as JSON
    """
    from mlos_repro.executor import plan_build

    _, plans = plan_build(recipes_dir, profile, stages, _store(store_dir), use_cache=not no_cache)
    if as_json:
        ui.emit_json({"stages": [p.to_json() for p in plans]})
    else:
        ui.plan(plans)


@main.command("explain")
@click.argument("stage")
@recipes_option
@profile_option
@store_option
@json_option
@_handle_errors
def explain_cmd(stage: str, recipes_dir: Path, profile: str | None, store_dir: Path | None,
                as_json: bool) -> None:
    """Everything about one STAGE: its recipe file, inputs, outputs, cache key, whether a build
    would run it and why, how long it took, where its last log is.

    \b
    Example:
      mlos-repro explain kernel
    """
    from mlos_repro.executor import plan_build

    recipes, plans = plan_build(recipes_dir, profile, (stage,), _store(store_dir))
    mine = next(p for p in plans if p.name == stage)
    definition = recipes.stages[stage]
    facts = {**mine.to_json(), "recipe": str(definition.source), "environment": definition.builder,
             "privileged": definition.privileged, "needs": sorted(definition.upstream),
             "inputs": {i.name: i.spec for i in definition.inputs}, "outputs": list(definition.outputs),
             "run": [list(c) for c in definition.run]}
    if as_json:
        ui.emit_json(facts)
    else:
        ui.explain(facts)


@main.command()
@click.argument("first", type=click.Path(exists=True, path_type=Path))
@click.argument("second", type=click.Path(exists=True, path_type=Path))
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write REPORT/<name>.txt and .html, with diffoscope on the differing members.")
@click.option("--diffoscope-timeout", default=300.0, show_default=True, metavar="SECONDS")
@click.option("--diffoscope-max-size", default=256 << 20, show_default=True, metavar="BYTES")
@json_option
@_handle_errors
def diff(first: Path, second: Path, report_dir: Path | None, diffoscope_timeout: float,
         diffoscope_max_size: int, as_json: bool) -> None:
    """Compare two files or directories layer by layer and name what differs inside.

    Recurses through .deb (ar), tar (gzip/xz/zstd/bzip2), cpio and compressed files, down to
    the innermost differing member and what differs (content, mode, owner, mtime, order).
    Exit 0 when identical, 1 when they differ.

    \b
    Example:
      mlos-repro diff out/iso/mlos.iso old/iso/mlos.iso --report reports/
    """
    import tempfile

    from mlos_repro.inspect import report
    from mlos_repro.inspect.layers import compare_paths

    with tempfile.TemporaryDirectory(prefix="mlos-diff-") as tmp:
        work = Path(tmp)
        diffs = compare_paths(first, second, first.name, work / "layers")
        paths: tuple[Path, Path] | None = None
        if diffs and report_dir is not None:
            paths = report.write(first.name, diffs, report_dir / first.name, work,
                                 report.DiffoscopeSettings(diffoscope_timeout, diffoscope_max_size))
        if as_json:
            ui.emit_json({"identical": not diffs, "differences": [d.to_json() for d in diffs],
                          "report": None if paths is None else {"txt": str(paths[0]),
                                                                "html": str(paths[1])}})
        elif diffs:
            sys.stdout.write(report.summary(f"{first} vs {second}", diffs))
            if paths:
                ui.info(f"report: {paths[0]}")
        else:
            ui.info("identical")
    if diffs:
        sys.exit(int(ExitCode.VERIFICATION_FAILED))


@main.command()
@recipes_option
@profile_option
@store_option
@mirror_option
@json_option
@_handle_errors
def fetch(recipes_dir: Path, profile: str | None, store_dir: Path | None, mirror: str | None,
          as_json: bool) -> None:
    """Download every locked .deb and pinned url:/deb: input into the store.

    Each download is checked against its pinned sha256; a mismatch is refused and not stored.

    \b
    Example:
      mlos-repro fetch
      mlos-repro fetch --profile release --mirror https://snapshot.debian.org/archive/debian/20251201T000000Z/
    """
    from mlos_repro.env.fetch import fetch_all
    from mlos_repro.recipe import load_recipes

    bar = ui.FetchBar()
    try:
        report = fetch_all(load_recipes(recipes_dir, profile), _store(store_dir), mirror, progress=bar)
    finally:
        bar.close()
    if as_json:
        ui.emit_json({"present": report.present, "downloaded": report.downloaded,
                      "downloaded_bytes": report.downloaded_bytes})
    else:
        ui.info(f"downloaded {ui.count(len(report.downloaded), 'new file')} "
                f"({ui.size(report.downloaded_bytes)}); {report.present} already in the store")


@main.command("pin")
@click.argument("url")
@recipes_option
@store_option
@_handle_errors
def pin_cmd(url: str, recipes_dir: Path, store_dir: Path | None) -> None:
    """Download URL, store it, and write its sha256 into every recipe input naming it.

    Write the input first as NAME = "url:URL#sha256=unpinned"; re-pinning replaces an older
    digest (and says so). The recipes are checked again afterwards.

    \b
    Example:
      mlos-repro pin https://example.org/axon-1.2.tar.gz
    """
    from mlos_repro.env.pin import pin
    from mlos_repro.recipe import load_recipes

    result = pin(recipes_dir, url, _store(store_dir))
    for path in result.files:
        ui.info(f"pinned {url}\n  sha256 {result.sha256}\n  in {path}")
    changed = sorted({p for p in result.previous if p not in ("unpinned", result.sha256)})
    if changed:
        ui.warn(f"the pin changed (was {', '.join(changed)}): the archive at {url} is not what was "
                "pinned before; review before committing")
    load_recipes(recipes_dir)


@main.command()
@click.argument("environments", nargs=-1)
@recipes_option
@store_option
@mirror_option
@_handle_errors
def lock(environments: tuple[str, ...], recipes_dir: Path, store_dir: Path | None,
         mirror: str | None) -> None:
    """Resolve builder.toml's ENVIRONMENTS (default: all) against the mirror into builder.lock.

    Needs the network; the resolved .debs are kept in the store.

    \b
    Example:
      mlos-repro lock           # every environment of recipes/builder.toml
      mlos-repro lock kernel    # only this one
    """
    from mlos_repro.env.lock import lock_environments
    from mlos_repro.recipe import load_recipes

    lock_environments(load_recipes(recipes_dir).builder, environments, _store(store_dir), mirror,
                      on_locked=lambda name, n: ui.info(f"locked {name}: {n} packages"))


@main.command("env")
@click.argument("name", default="default")
@recipes_option
@store_option
@click.option("--rebuild", is_flag=True, help="Assemble again even if the store has it.")
@json_option
@_handle_errors
def env_cmd(name: str, recipes_dir: Path, store_dir: Path | None, rebuild: bool,
            as_json: bool) -> None:
    """Assemble builder environment NAME offline from the store and print its digest.

    \b
    Example:
      mlos-repro env default --json
    """
    from mlos_repro.env.assemble import environment
    from mlos_repro.env.lockfile import locked_environment
    from mlos_repro.errors import BadInputError
    from mlos_repro.recipe import load_recipes

    recipes = load_recipes(recipes_dir)
    if name not in recipes.builder.environments:
        raise BadInputError(f"{recipes.builder.path}: no environment {name!r}")
    spec, locked = locked_environment(recipes.builder, name)
    ref = environment(spec, locked, recipes.builder.source_date_epoch, _store(store_dir),
                      rebuild=rebuild)
    if as_json:
        ui.emit_json({"name": name, "digest": f"sha256:{ref.digest}", "root": str(ref.root)})
    else:
        sys.stdout.write(f"sha256:{ref.digest}\n")


@main.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--from", "source", type=click.Path(path_type=Path), default=None, metavar="RECIPES",
              help="Copy builder.toml and builder.lock from this recipe directory [default: the toolkit's "
                   "own recipes].")
@_handle_errors
def init_cmd(directory: Path, source: Path | None) -> None:
    """Start a repository of your own recipes in DIRECTORY (new or empty): the pinned
    environments, one example stage (hello.toml: compile src/hello.c) and an SBOM policy to fill
    in. It builds as it is.

    \b
    Example:
      mlos-repro init my-distro && cd my-distro
      mlos-repro fetch && mlos-repro build && cat out/hello/hello.txt
    """
    from mlos_repro.scaffold import init_repository

    for path in init_repository(directory, source):
        ui.info(f"wrote {path}")
    ui.info(f"next: cd {directory} && mlos-repro fetch && mlos-repro build   (docs/recipes.md: every key)")


@main.group()
def keys() -> None:
    """Create and inspect the keys of an MLOS deployment."""


@keys.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--uid", default=None, help="User id of the archive OpenPGP key "
              "[default: MLOS Linux archive key <archive@mlos.example>].")
@json_option
@_handle_errors
def keys_init(directory: Path, uid: str | None, as_json: bool) -> None:
    """Create the archive OpenPGP key, the attestation keys and the Secure Boot db key in
    DIRECTORY (new or empty, outside any source checkout) and print their fingerprints.

    \b
    Example:
      mlos-repro keys init ~/.config/mlos-repro/keys
    """
    from mlos_repro.sign.keys import DEFAULT_UID, init_keys

    summary = init_keys(directory, uid or DEFAULT_UID)
    if as_json:
        ui.emit_json(summary)
        return
    archive = summary["archive"]
    click.echo(f"archive key      {archive['fingerprint']}  {archive['uid']}")
    click.echo(f"  sign with:     mlos-repro build --gnupghome {directory / 'gnupg'}")
    click.echo(f"  apt signed-by: {directory / archive['keyring']}")
    for name, key in summary["attestation"].items():
        click.echo(f"{name + ' key':<16} {key['keyid']}  ({directory / key['private']})")
    db = summary["secureboot"]
    click.echo(f"secure boot db   {db['certificate_sha256']}  {db['subject']}")
    click.echo(f"  enrol in firmware: {directory / db['certificate_der']}")



@main.group("store")
def store_group() -> None:
    """Look after a store: re-hash what it holds, reclaim space."""


@store_group.command("check")
@store_option
@click.option("--repair", is_flag=True,
              help="Remove corrupted blobs and the stage entries that need them (the next build "
                   "makes them again).")
@json_option
@_handle_errors
def store_check(store_dir: Path | None, repair: bool, as_json: bool) -> None:
    """Re-hash every blob of the store and check every stage entry.

    Exit 0 when everything matches; 1 when a blob's bytes no longer match its name or an entry
    needs a missing or corrupted blob (also with --repair, after removing them).

    \b
    Example:
      mlos-repro store check --repair
    """
    from mlos_repro.store_admin import check_store

    store = _store(store_dir)
    report = check_store(store, repair=repair)
    if as_json:
        ui.emit_json({"store": str(store.root), **report.to_json()})
    else:
        for problem in report.corrupted:
            click.echo(f"corrupted blob  {ui.printable(problem)}")
        for problem in report.broken_entries:
            click.echo(f"broken entry    {ui.printable(problem)}")
        for path in report.removed:
            click.echo(f"removed         {path}")
        verdict = "intact" if report.ok else (
            f"{len(report.corrupted)} corrupted blob(s), {len(report.broken_entries)} broken entr(y/ies)")
        ui.info(f"{store.root}: {report.blobs} blobs, {report.bytes / 2**20:.0f} MiB re-hashed in "
                f"{report.seconds:.1f} s: {verdict}"
                + ("" if report.ok or repair else "; run again with --repair to remove them"))
    if not report.ok:
        sys.exit(int(ExitCode.VERIFICATION_FAILED))


@store_group.command("gc")
@store_option
@click.option("--keep-days", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Keep stage entries, memos and blobs stored or used within this many days.")
@click.option("--recipes", "recipes_dir", type=click.Path(path_type=Path), default=None,
              help="Keep every input these recipes pin (locked .debs, url:/deb: inputs), in every "
                   "profile [default: ./recipes if it exists].")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
@_handle_errors
def store_gc(store_dir: Path | None, keep_days: float, recipes_dir: Path | None, dry_run: bool,
             as_json: bool) -> None:
    """Reclaim space: remove what no recent build used.

    Stage entries and memos not used within --keep-days go, then every blob that nothing kept
    needs, that no recipe pins and that was not stored or used within --keep-days (never one
    stored in the last hour: a running build may still need it). A later build makes again
    what it lacks.

    \b
    Example:
      mlos-repro store gc --keep-days 7 --dry-run
    """
    from mlos_repro.pipelines import pinned_digests
    from mlos_repro.store_admin import collect_garbage

    store = _store(store_dir)
    if recipes_dir is None and Path("recipes/builder.toml").is_file():
        recipes_dir = Path("recipes")
    pinned = pinned_digests(recipes_dir) if recipes_dir is not None else set()
    report = collect_garbage(store, keep_days=keep_days, pinned=pinned, dry_run=dry_run)
    if as_json:
        ui.emit_json({"store": str(store.root), "dry_run": dry_run, "pinned_by":
                      str(recipes_dir) if recipes_dir else None, **report.to_json()})
        return
    verb = "would remove" if dry_run else "removed"
    ui.info(f"{store.root}: {verb} {report.entries_removed} stage entries, "
            f"{report.listings_removed} memos and {report.blobs_removed} blobs "
            f"({report.bytes_freed / 2**20:.0f} MiB); kept {report.blobs_kept} blobs "
            f"({report.bytes_kept / 2**20:.0f} MiB)"
            + ("" if recipes_dir else "; no recipes named, so nothing was kept for being pinned"))


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names no sub-command, goes to `default`:
    `mlos-repro sbom ARTIFACT` is `mlos-repro sbom show ARTIFACT`."""

    default = "show"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@main.group(cls=_DefaultGroup)
def sbom() -> None:
    """Summarise an artifact's SBOM, or compare two.

    \b
    mlos-repro sbom OUT/iso/mlos.iso       # reads OUT/iso/mlos.iso.cdx.json (or give the .cdx.json)
    mlos-repro sbom diff A.cdx.json B.cdx.json
    """


@sbom.command("show")
@click.argument("artifact", type=click.Path(path_type=Path))
@json_option
@_handle_errors
def sbom_show(artifact: Path, as_json: bool) -> None:
    """Summarise ARTIFACT's SBOM (ARTIFACT.cdx.json beside it, or the .cdx.json itself).

    The summary gives the component count, a licence histogram and the files no package owns,
    and checks the SBOM (CycloneDX 1.6 schema, package URLs, NTIA minimum elements) and, when
    the artifact is at hand, that it describes those exact bytes. Exit 1 if a check fails.

    \b
    Example:
      mlos-repro sbom out/iso/mlos.iso
    """
    from mlos_repro.sbom import summary as sboms

    path, described = sboms.locate(artifact)
    data, problems = sboms.load(path)
    info = sboms.summary(data, problems)
    problems += sboms.check_artifact(info, described)
    info["valid"] = info["valid"] and not problems
    if as_json:
        ui.emit_json(info)
    else:
        version = "" if str(info["version"]).startswith("sha256:") else f" {info['version']}"
        what = f"{info['artifact']}, " if info["artifact"] != info["name"] else ""
        click.echo(f"{info['name']}{version}  ({what}sha256 {info['sha256']})")
        click.echo(f"{info['components']} components: "
                   + ", ".join(f"{n} {k}" for k, n in info["by_kind"].items()))
        click.echo("licences:")
        for name, n in list(info["licenses"].items())[:15]:
            click.echo(f"  {n:5d}  {name}")
        if len(info["licenses"]) > 15:
            click.echo(f"  … {len(info['licenses']) - 15} more (--json lists all)")
        unowned = info["unowned_files"]
        click.echo(f"files not owned by any package: {len(unowned)}")
        for name in unowned[:20]:
            click.echo(f"  {name}")
        if len(unowned) > 20:
            click.echo(f"  … {len(unowned) - 20} more (--json lists all)")
        for p in problems:
            ui.error(p, None)
    if problems:
        sys.exit(int(ExitCode.VERIFICATION_FAILED))


@sbom.command("diff")
@click.argument("first", type=click.Path(path_type=Path))
@click.argument("second", type=click.Path(path_type=Path))
@json_option
@_handle_errors
def sbom_diff(first: Path, second: Path, as_json: bool) -> None:
    """Components added, removed and changed from SBOM FIRST to SECOND. Exit 1 if any.

    \b
    Example:
      mlos-repro sbom diff old/iso/mlos.iso.cdx.json out/iso/mlos.iso.cdx.json
    """
    from mlos_repro.sbom import summary as sboms

    (a, pa), (b, pb) = sboms.load(first), sboms.load(second)
    changes = sboms.diff(a, b)
    if as_json:
        ui.emit_json({k: [c.to_json() for c in v] for k, v in changes.items()}
                     | {"problems": {str(first): pa, str(second): pb}})
    else:
        for c in changes["added"]:
            click.echo(f"+ {c.name} {c.second}")
        for c in changes["removed"]:
            click.echo(f"- {c.name} {c.first}")
        for c in changes["changed"]:
            detail = f"{c.first} -> {c.second}" if c.first != c.second else ", ".join(c.what)
            click.echo(f"~ {c.name} {detail}")
        if not any(changes.values()):
            ui.info("same components")
    if any(changes.values()):
        sys.exit(int(ExitCode.VERIFICATION_FAILED))

@main.command()
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), required=True,
              help="Key directory made by `mlos-repro keys init` (archive key, builder and owner keys).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="The release directory to write (new or empty).")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="A build's OUT directory: the release must be of exactly that build.")
@click.option("--stage", "stages", multiple=True, metavar="NAME",
              help="Release only this stage and what it needs (repeat it) [default: every stage of "
                   "the profile].")
@recipes_option
@profile_option
@store_option
@click.option("--archive-key", default=None, metavar="KEYID",
              help="Which secret key of KEYS/gnupg signs (needed when it holds several).")
@click.option("--expires-days", type=click.IntRange(min=1), default=None,
              help="Days until the release and its layout expire [default: layouts/layout.toml, "
                   "else 365].")
@click.option("--release-version", "version", default=None, metavar="VERSION",
              help="The release's version, signed in release.json (verify-iso refuses older ones) "
                   "[default: the version in the build's mlos.json].")
@click.option("--links", "link_format", type=click.Choice(["dsse", "openpgp"]), default="dsse",
              show_default=True,
              help="Sign the in-toto links as DSSE envelopes with the builder key, or as classic links "
                   "with the archive key (statements stay DSSE, builder key).")
@click.option("--with-inputs", is_flag=True,
              help="Carry every pinned input (.debs, url:/deb: archives) in RELEASE/inputs/, so a rebuild "
                   "needs nothing else.")
@click.option("--sigstore", "use_sigstore", is_flag=True,
              help="Also sign SHA256SUMS and the provenance keylessly with sigstore (bundles beside them).")
@click.option("--identity-token", default=None, envvar="SIGSTORE_ID_TOKEN", metavar="JWT",
              help="OIDC identity token for --sigstore [default: ambient CI credentials].")
@click.option("--trust-config", type=click.Path(path_type=Path), default=None,
              help="Client trust config of a private sigstore instance [default: the public one].")
@json_option
@_handle_errors
def release(keys_dir: Path, out_dir: Path, from_dir: Path | None, stages: tuple[str, ...], recipes_dir: Path,
            profile: str | None, store_dir: Path | None, archive_key: str | None, expires_days: int | None,
            version: str | None, link_format: str, with_inputs: bool, use_sigstore: bool,
            identity_token: str | None,
            trust_config: Path | None, as_json: bool) -> None:
    """Assemble and sign the release directory of a finished build.

    Every stage must be in the store already (run `mlos-repro build` first); nothing is built.
    Writes artifacts/, SHA256SUMS (+ .gpg detached, .asc clearsigned, by the archive key),
    sbom/, attestations/ (an in-toto link per stage, SLSA provenance and SBOM statements per
    output, in DSSE envelopes signed by the builder key), layout/ (the layout made from the
    recipes, signed by the owner key, with its public keys), inputs.lock and release.json
    (what the release is, its version and expiry, and the digest of every file above but the
    artifacts, signed by the archive key: release.json.gpg).

    \b
    Example:
      mlos-repro release --keys ~/.config/mlos-repro/keys --out release --from out --with-inputs
    """
    from mlos_repro import pipelines
    from mlos_repro.release import Sigstore

    if (identity_token or trust_config) and not use_sigstore:
        raise click.UsageError("--identity-token and --trust-config apply to --sigstore only")
    options = pipelines.ReleaseOptions(
        keys_dir=keys_dir, out_dir=out_dir, from_dir=from_dir, recipes_dir=recipes_dir, profile=profile,
        archive_key=archive_key, expires_days=expires_days, version=version,
        openpgp_links=link_format == "openpgp", with_inputs=with_inputs, stages=stages,
        sigstore=Sigstore(identity_token, trust_config) if use_sigstore else None)
    released = pipelines.release(options, _store(store_dir))
    if as_json:
        ui.emit_json({"release": str(released.path), "stages": list(released.stages)})
    else:
        ui.info(f"release of {len(released.stages)} stages written to {released.path}")

def _trust(keyring: Path | None, trusted_root: Path | None, identity: str | None, issuer: str | None,
           *others: Path) -> Any:
    """The trust anchors given to verify or verify-iso: the archive key, or a sigstore trusted
    root with the identity and issuer that must have signed (all three, as sigstore's own CLI
    wants), or both. Every file named must exist."""
    from mlos_repro.audit.trust import Trust
    from mlos_repro.errors import BadInputError

    for given in (keyring, trusted_root, *others):
        if given is not None and not given.is_file():
            raise BadInputError(f"{given}: no such file")
    keyless = (trusted_root, identity, issuer)
    if any(v is not None for v in keyless) and not all(v is not None for v in keyless):
        raise click.UsageError("--trusted-root, --identity and --issuer go together: a sigstore signature "
                               "proves nothing without the identity and the issuer that vouched for it")
    if keyring is None and trusted_root is None:
        raise click.UsageError("give a trust anchor: --keyring (the release's OpenPGP public key), or "
                               "--trusted-root, --identity and --issuer (its sigstore identity)")
    return Trust(keyring, (trusted_root, identity, issuer) if trusted_root and identity and issuer else None)


trust_options = [
    click.option("--keyring", type=click.Path(path_type=Path), default=None,
                 help="The archive key (OpenPGP public key) you trust; it signs the release (armored or "
                      "binary)."),
    click.option("--trusted-root", type=click.Path(path_type=Path), default=None,
                 help="Instead of (or as well as) --keyring: the sigstore trusted root you trust ..."),
    click.option("--identity", default=None, help="... the identity that must have signed ..."),
    click.option("--issuer", default=None, help="... and the OIDC issuer that vouched for that identity."),
]


def with_trust_options(func: F) -> F:
    for option in reversed(trust_options):
        func = option(func)
    return func


root_key_option = click.option(
    "--root-key", type=click.Path(path_type=Path), required=True,
    help="The layout's root (owner) public key you trust: a key dict with keyid, as "
         "`keys init` writes attestation/owner.pub.json.")


@main.command("rebuild")
@click.argument("release_dir", metavar="RELEASE", type=click.Path(path_type=Path))
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path), required=True,
              help="Your own key directory (mlos-repro keys init): its builder key signs what you found; "
                   "publish its attestation/builder.pub.json.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="The attestations directory to write (new or empty); any HTTP server can publish it.")
@root_key_option
@with_trust_options
@store_option
@mirror_option
@click.option("--sandbox", "sandbox_name", type=click.Choice(["bwrap", "podman"]), default="bwrap",
              show_default=True, help="Sandbox backend.")
@executor_options
@click.option("--vary", "vary_spec", default=None, metavar="SPEC",
              help="Variations of your build, as for build --verify [default: all this host can apply].")
@click.option("--id", "rebuilder_id", default=None, metavar="ID",
              help="Your identity in the summaries (verifier.id) [default: mlos-repro-rebuilder:KEYID].")
@click.option("--diffoscope-timeout", default=300.0, show_default=True, metavar="SECONDS")
@click.option("--diffoscope-max-size", default=256 << 20, show_default=True, metavar="BYTES")
@json_option
@_handle_errors
def rebuild_cmd(release_dir: Path, keys_dir: Path, out_dir: Path, root_key: Path, keyring: Path | None,
                trusted_root: Path | None, identity: str | None, issuer: str | None, store_dir: Path | None,
                mirror: str | None, sandbox_name: str, executor_kind: str, scheduler: str | None,
                vary_spec: str | None, rebuilder_id: str | None,
                diffoscope_timeout: float, diffoscope_max_size: int, as_json: bool) -> None:
    """Rebuild a published release from its source archive and sign what you found.

    Checks the release as `verify` does (with the trust options you give), unpacks its source/
    archive, builds every stage from nothing (no cache hit; your environment varied as
    --vary says) and compares every artifact with the release's SHA256SUMS. Writes to OUT, signed
    by your builder key: an SLSA verification summary per artifact (vsa/STAGE/OUTPUT.intoto.json,
    PASSED or FAILED), an in-toto link per stage (links/), reports/ for what differs,
    rebuild.json and rebuilder.pub.json. Exit 0 when every artifact matched, 1 otherwise.

    \b
    Example:
      mlos-repro rebuild release --keys my-keys --out attestations \\
          --root-key owner.pub.json --keyring archive-keyring.gpg
    """
    from mlos_repro import pipelines
    from mlos_repro.errors import BadInputError
    from mlos_repro.inspect.report import DiffoscopeSettings
    from mlos_repro.rebuild.variations import parse_vary

    if not release_dir.is_dir():
        raise BadInputError(f"{release_dir}: not a directory",
                            "name a release directory (mlos-repro release)")
    trust = _trust(keyring, trusted_root, identity, issuer, root_key)
    options = pipelines.RebuildOptions(
        release_dir=release_dir, keys_dir=keys_dir, out_dir=out_dir, root_key=root_key, trust=trust,
        enabled=parse_vary(vary_spec), settings=DiffoscopeSettings(diffoscope_timeout, diffoscope_max_size),
        sandbox=sandbox_name, identity=rebuilder_id, mirror=mirror, executor=executor_kind,
        scheduler=scheduler)
    rebuilt = pipelines.rebuild(options, _store(store_dir), progress=ui.progress, warn=ui.warn)
    passed = sum(1 for v in rebuilt.verdicts if v.result == "PASSED")
    if as_json:
        ui.emit_json({"attestations": str(rebuilt.path), "ok": rebuilt.ok, "passed": passed,
                      "failed": len(rebuilt.verdicts) - passed,
                      "artifacts": [v.to_json() for v in rebuilt.verdicts]})
    else:
        for v in rebuilt.verdicts:
            why = f"  at {v.member}" if v.member else ""
            click.echo(ui.printable(f"{v.result:6} {v.name}{why}"))
        ui.info(f"{passed} of {len(rebuilt.verdicts)} artifacts reproduced bit for bit; signed summaries in "
                f"{rebuilt.path}")
    if not rebuilt.ok:
        sys.exit(int(ExitCode.VERIFICATION_FAILED))


rebuilder_options = [
    click.option("--rebuild", "rebuild_dirs", multiple=True, metavar="DIR|URL",
                 help="A rebuilder's attestations directory (mlos-repro rebuild), or the http(s) URL "
                      "where it is published; repeat for each."),
    click.option("--rebuilder-key", "rebuilder_keys", multiple=True, type=click.Path(path_type=Path),
                 metavar="FILE", help="A rebuilder's public key you trust (its builder.pub.json); repeat."),
    click.option("--threshold", type=click.IntRange(min=1), default=None,
                 help="How many distinct listed rebuilders must have reproduced each artifact "
                      "[default: every listed one]."),
]


def with_rebuilder_options(func: F) -> F:
    for option in reversed(rebuilder_options):
        func = option(func)
    return func


def _rebuilders(rebuild_dirs: tuple[str, ...], rebuilder_keys: tuple[Path, ...],
                threshold: int | None) -> Any:
    from mlos_repro.audit.rebuilders import Rebuilders
    from mlos_repro.errors import BadInputError

    if not (rebuild_dirs or rebuilder_keys or threshold is not None):
        return None
    if not rebuild_dirs or not rebuilder_keys:
        raise click.UsageError("--rebuild and --rebuilder-key go together: a rebuild counts only when "
                               "signed by a rebuilder you trust")
    dirs = tuple(d if d.startswith(("http://", "https://")) else Path(d) for d in rebuild_dirs)
    for given in (*dirs, *rebuilder_keys):
        if isinstance(given, Path) and not given.exists():
            raise BadInputError(f"{given}: no such file or directory")
    return Rebuilders(dirs, rebuilder_keys, threshold or len(rebuilder_keys))


@main.command("verify")
@click.argument("release_dir", metavar="RELEASE", type=click.Path(path_type=Path))
@root_key_option
@with_trust_options
@with_rebuilder_options
@click.option("--db-cert", type=click.Path(path_type=Path), default=None,
              help="The Secure Boot db certificate (PEM or DER) your machines enrol: the signed EFI images "
                   "must be signed with it [default: the one the release's owner signed].")
@json_option
@_handle_errors
def verify_release(release_dir: Path, root_key: Path, keyring: Path | None, trusted_root: Path | None,
                   identity: str | None, issuer: str | None, rebuild_dirs: tuple[str, ...],
                   rebuilder_keys: tuple[Path, ...], threshold: int | None, db_cert: Path | None,
                   as_json: bool) -> None:
    """Check a release's whole supply chain offline, step by numbered step.

    release.json (signed by the archive key: what the release is, the digest of every file
    outside artifacts/, its expiry), the layout (signature by --root-key, expiry), each step's
    links (present, signed by its functionaries, threshold, artifact rules), SHA256SUMS (its
    signature; the files), the provenance and SBOM statements (signed, bound to the listed
    digests), the SBOMs, the images' bindings, the APT repository signatures and the EFI images
    signed for Secure Boot (each, without its signature, the attested image). A check whose
    anchor was not given is skipped, never ok. Exit 0 when all hold, 1 when one fails, 2 when
    a file is malformed.

    \b
    Example:
      mlos-repro verify release --root-key KEYS/attestation/owner.pub.json \\
          --keyring KEYS/archive-keyring.gpg [--rebuild DIR --rebuilder-key KEY]
    """
    from mlos_repro.audit.release import ReleaseVerifier
    from mlos_repro.audit.trust import anchor_warnings
    from mlos_repro.errors import BadInputError

    if not release_dir.is_dir():
        raise BadInputError(f"{release_dir}: not a directory",
                            "name a release directory (mlos-repro release)")
    trust = _trust(keyring, trusted_root, identity, issuer, root_key)
    warnings = anchor_warnings(trust, release_dir, root_key)
    for warning in warnings:
        ui.warn(warning)
    rebuilders = _rebuilders(rebuild_dirs, rebuilder_keys, threshold)
    if db_cert is not None and not db_cert.is_file():
        raise BadInputError(f"--db-cert {db_cert}: no such file", "name the db certificate (keys init: "
                            "KEYS/secureboot/db.crt or db.cer)")
    outcome = ReleaseVerifier(release_dir, root_key, trust, rebuilders, db_cert=db_cert).run()
    if as_json:
        ui.emit_json({"release": str(release_dir), "ok": outcome.ok, "verdict": outcome.verdict,
                      **{s: outcome.count(s) for s in ("passed", "failed", "skipped")},
                      "checks": [c.to_json() for c in outcome.checks], "warnings": warnings})
    else:
        marks = {"passed": "ok  ", "skipped": "skip", "failed": "FAIL"}
        for c in outcome.checks:
            note = f" — {c.note}" if c.note and c.ok else ""
            click.echo(f"{c.number:2}. {marks[c.status]} {c.name}{ui.printable(note)}")
            for p in c.problems:
                click.echo(f"        {ui.printable(p)}")
        ui.info(outcome.verdict)
    if not outcome.ok:
        sys.exit(int(ExitCode.BAD_INPUT if outcome.malformed else ExitCode.VERIFICATION_FAILED))


@main.command("verify-iso")
@click.argument("iso", type=click.Path(path_type=Path))
@with_trust_options
@click.option("--release", "release_dir", type=click.Path(path_type=Path), default=None,
              help="Where SHA256SUMS and its signature are [default: beside the ISO or above it].")
@click.option("--min-version", default=None, metavar="VERSION",
              help="Refuse a release older than VERSION (Debian version order).")
@click.option("--accept-older", is_flag=True,
              help="Accept a release older than the newest verified before on this machine.")
@with_rebuilder_options
@json_option
@_handle_errors
def verify_iso_cmd(iso: Path, keyring: Path | None, trusted_root: Path | None, identity: str | None,
                   issuer: str | None, release_dir: Path | None, min_version: str | None, accept_older: bool,
                   rebuild_dirs: tuple[str, ...], rebuilder_keys: tuple[Path, ...], threshold: int | None,
                   as_json: bool) -> None:
    """Is this ISO the one the archive key signed for? One verdict, and what the ISO is.

    Only signed facts are shown: the version and build date from release.json and the kernel
    and package count from the SBOM it lists, when both are beside SHA256SUMS and signed. A
    release older than one verified before on this machine is refused (a rollback).

    \b
    Example:
      mlos-repro verify-iso mlos.iso --keyring archive-keyring.gpg
    """
    from mlos_repro.audit.iso import verify_iso
    from mlos_repro.audit.trust import Failed, Malformed, anchor_warnings

    trust = _trust(keyring, trusted_root, identity, issuer)
    try:
        verdict = verify_iso(iso, trust, release_dir, min_version=min_version, accept_older=accept_older,
                             rebuilders=_rebuilders(rebuild_dirs, rebuilder_keys, threshold))
    except (Failed, Malformed) as e:
        if as_json:
            ui.emit_json({"iso": str(iso), "ok": False, "error": str(e)})
        else:
            ui.error(f"NOT VERIFIED: {ui.printable(str(e))}", None)
        sys.exit(int(ExitCode.BAD_INPUT if isinstance(e, Malformed) else ExitCode.VERIFICATION_FAILED))
    notes = anchor_warnings(trust, verdict.release) + verdict.notes
    if as_json:
        ui.emit_json({"iso": str(iso), "ok": True, "sha256": verdict.sha256, "listed_as": verdict.listed_as,
                      "release": str(verdict.release), "signed_by": verdict.signed_by, "facts": verdict.facts,
                      "reproduced": verdict.reproduced, "notes": notes})
        return
    f = verdict.facts
    click.echo(f"VERIFIED: {iso.name} is {verdict.listed_as} of the release in {verdict.release}")
    click.echo(f"  SHA256SUMS {', '.join(verdict.signed_by)}")
    if f:
        click.echo(ui.printable(f"  {f['name']} {f['version']} ({f['profile']}), built {f['build_date']}, "
                                f"released {f['released']}, expires {f['expires']}"))
    if "kernel" in f:
        click.echo(f"  kernel {ui.printable(str(f['kernel']))}, {f['packages']} packages "
                   "(its SBOM, listed in the signed release.json)")
    if verdict.reproduced is not None:
        r = verdict.reproduced
        click.echo(f"  reproduced by {r['by']} of {r['listed']} rebuilders (threshold {r['threshold']})")
    click.echo(f"  sha256 {verdict.sha256}")
    for note in notes:
        ui.warn(note)
