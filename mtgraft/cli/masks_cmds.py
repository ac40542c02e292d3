"""``mtgraft masks``: the SkillPatch registry on MLflow (list, show, pull, apply, alias, delete, register)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import command, field_table, print_json, table_out
from mtgraft.cli.options import registry_options
from mtgraft.errors import MtgraftError
from mtgraft.progress import console

masks_app = typer.Typer(
    help="The mask registry: SkillPatches as versions of MLflow registered models. "
         "REF = name@alias, name/version (name: a registered model, or a task with exactly one), or a patch file.",
    no_args_is_help=True,
)
app.add_typer(masks_app, name="masks")

REF_HELP = "name@alias, name/version, or a patch file; name is a registered model or a task name (hedge@best) that has exactly one."


def _registry(opts: dict[str, Any]) -> Any:
    from mtgraft.registry import MaskRegistry

    return MaskRegistry(opts["tracking_uri"])


def _is_file(ref: str) -> bool:
    """True for an existing patch file; MtgraftError for a missing one that looks like a path."""
    from mtgraft.registry import local_patch

    return local_patch(ref) is not None


def _print_wide(table: Table) -> None:
    """Print a table at its natural width (never crop names and numbers on a narrow terminal)."""
    from rich.console import Console
    from rich.measure import Measurement

    natural = Measurement.get(table_out, table_out.options.update(width=10_000), table).maximum
    if natural <= table_out.width:
        table_out.print(table)
    else:
        Console(width=natural).print(table)


def _f(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


@command(masks_app, "list", registry_options)
def list_cmd(
    task: str | None = typer.Option(None, "--task", help="Only patches of this task."),
    base: str | None = typer.Option(None, "--base", help="Only patches of this base model (name, short name "
                                                         "or the start of its content hash)."),
    incomplete: bool = typer.Option(False, "--incomplete", help="Only versions whose registration never finished "
                                                                "(a killed or failed command; remove them with "
                                                                "'masks delete --incomplete')."),
    **opts: Any,
) -> None:
    """List registered SkillPatches: name, version, aliases, task, base, method, sparsity, size, accuracy, Rel."""
    from mtgraft.registry import base_short_name

    reg = _registry(opts)
    rows = reg.list_masks(task=task, base=base, incomplete=incomplete)
    if opts["json_out"]:
        print_json({"tracking_uri": reg.tracking_uri, "masks": rows})
        return
    t = Table(title=f"SkillPatches in {reg.tracking_uri}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (("name", "left"), ("version", "right"), ("aliases", "left"), ("task", "left"),
                      ("base", "left"), ("method", "left"), ("sparsity", "right"), ("size", "right"),
                      ("accuracy", "right"), ("Rel", "right"), ("flag (never best)", "left")):
        t.add_column(col, justify=just, overflow="fold", no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(r["name"], r["version"], ", ".join(r["aliases"]), r["task"] or "-", base_short_name(r["base_model"] or "-"),
                  r["method"] or "-", _f(r["sparsity"], ".3g"),
                  f"{r['region_size']:,}" if r["region_size"] is not None else "-",
                  _f(r["accuracy"]), _f(r["rel"]) + (f" [{_f(r['rel_ci95'][0], '.2f')}, {_f(r['rel_ci95'][1], '.2f')}]"
                                                     if r.get("rel_ci95") else ""), r.get("flag") or "")
    _print_wide(t)
    if incomplete:
        console.print(f"{len(rows)} incomplete version(s): registrations that never finished"
                      + ("; remove them with 'mtgraft masks delete --incomplete'" if rows else ""))
    elif not rows:
        console.print("no SkillPatches registered" + (" matching the filters" if task or base else ""))
    else:
        console.print("sparsity and size count the graftable body; the task head is always grafted")


@command(masks_app, "show", registry_options)
def show_cmd(
    ref: str = typer.Argument(..., help=REF_HELP),
    **opts: Any,
) -> None:
    """Everything about one patch: all tags, run metrics and lineage (producing run, fine-tuning run)."""
    from mtgraft.registry import file_info
    from mtgraft.tracking import flatten

    info = file_info(ref) if _is_file(ref) else _registry(opts).show(ref)
    if opts["json_out"]:
        print_json(info)
        return
    title = info["ref"] + (f" · aliases: {', '.join(info['aliases'])}" if info.get("aliases") else "")
    t = field_table(title, overflow="fold")
    for k, v in sorted(info["tags"].items()):
        t.add_row(k, v)
    for k, v in sorted(flatten(info.get("metrics") or {}, sep="/").items()):
        t.add_row(f"metric {k}", _f(v) if isinstance(v, float) else str(v))
    for k, v in (info.get("lineage") or {}).items():
        if v is not None:
            t.add_row(f"lineage {k}", str(v))
    if info.get("description"):
        t.add_row("description", info["description"])
    table_out.print(t)


@command(masks_app, "pull", registry_options)
def pull_cmd(
    ref: str = typer.Argument(..., help=REF_HELP),
    out: Path = typer.Option(..., "--out", help="Where to write the patch file (a file, or a folder to put it in)."),
    **opts: Any,
) -> None:
    """Download a registered patch; its sha256 must match the one recorded at registration."""

    if _is_file(ref):
        import shutil

        from mtgraft.patches import SkillPatch
        from mtgraft.utils import atomic_file, sha256_file

        SkillPatch.load(ref)
        dest = out / Path(ref).name if out.is_dir() else out
        with atomic_file(dest, "wb") as f, open(ref, "rb") as src:
            shutil.copyfileobj(src, f)
        result = {"ref": ref, "path": str(dest), "sha256": sha256_file(dest), "verified": False}
    else:
        result = _registry(opts).pull(ref, out)
    if opts["json_out"]:
        print_json(result)
        return
    check = "sha256 verified" if result["verified"] else "local file copied"
    console.print(f"{result['ref']} → [bold]{result['path']}[/] ({check}: {result['sha256'][:16]}…)")


@command(masks_app, "apply", registry_options)
def apply_cmd(
    refs: list[str] = typer.Argument(..., help="One or more REFs (name@alias, name/version or patch files) "
                                              "of the same base model."),
    to: str | None = typer.Option(None, "--to", help="Base model (name, folder or mtgraft checkpoint); "
                                                       "default: the base recorded in the patches."),
    out: Path = typer.Option(..., "--out", help="Output checkpoint folder (usable by 'mtgraft eval')."),
    overlap: str = typer.Option("average", "--overlap",
                                help="Weights set by more than one patch: average | sum | error (| first)."),
    **opts: Any,
) -> None:
    """Graft one or more skills onto one base (Localize-and-Stitch) and save a checkpoint folder."""
    from mtgraft.patches import OVERLAP_POLICIES, SkillPatch, apply_patches
    from mtgraft.registry import resolve_patch_files

    if overlap not in OVERLAP_POLICIES:
        raise MtgraftError(f"unknown --overlap '{overlap}' (use average, sum or error)")
    with resolve_patch_files(refs, opts["tracking_uri"]) as files:
        patches = [SkillPatch.load(f["path"]) for f in files]
        for f, p in zip(files, patches, strict=True):
            if f.get("base_hash") and f["base_hash"] != p.header.base_hash:
                raise MtgraftError(f"{f['ref']}: the file's base hash differs from the registered one — refusing it")
        sources = [{"ref": f["ref"], "sha256": f["sha256"], "from_registry": f["registry"]} for f in files]
        result = apply_patches(patches, to, out, overlap, sources)
    if opts["json_out"]:
        print_json(result)
        return
    tasks = ", ".join(result["tasks"])
    console.print(f"grafted {len(patches)} patch{'es' if len(patches) > 1 else ''} ({tasks}): "
                  f"{result['region_size']:,} entries (sparsity {result['sparsity']:.4g} of the graftable body) "
                  f"+ {result['head_params']:,} head params onto {result['base_model']} → [bold]{out}[/]")
    if len(patches) > 1:
        console.print(f"{result['overlapping_entries']:,} weights were set by more than one patch "
                      f"(--overlap {overlap})")


@command(masks_app, "alias", registry_options)
def alias_cmd(
    ref: str = typer.Argument(..., help="name@alias or name/version."),
    name: str = typer.Argument(..., help="The alias to point at that version (e.g. best, prod)."),
    **opts: Any,
) -> None:
    """Point an alias of a registered model at one of its versions."""

    if _is_file(ref):
        raise MtgraftError(f"'{ref}' is a local patch file; register it first ('mtgraft masks register')")
    res = _registry(opts).set_alias(ref, name)
    if opts["json_out"]:
        print_json(res)
        return
    console.print(f"{res['name']}@{res['alias']} → version {res['version']}")


@command(masks_app, "delete", registry_options)
def delete_cmd(
    ref: str | None = typer.Argument(None, help="name/version or name@alias (one version); a bare name with --all."),
    all_versions: bool = typer.Option(False, "--all", help="Delete a whole registered model (bare name) "
                                                           "and all its versions."),
    incomplete: bool = typer.Option(False, "--incomplete", help="Delete every version whose registration never "
                                                                "finished (those 'masks list --incomplete' shows; "
                                                                "registrations still running here are kept)."),
    **opts: Any,
) -> None:
    """Delete one registered version (or, with --all, a whole registered model). Run artifacts are kept."""

    if incomplete:
        if ref is not None or all_versions:
            raise MtgraftError("--incomplete deletes the unfinished versions of every model: give no REF and no --all")
        res = _registry(opts).delete_incomplete()
        if opts["json_out"]:
            print_json(res)
            return
        console.print(f"deleted {len(res['deleted'])} incomplete version(s)" +
                      (f": {', '.join(res['deleted'])}" if res["deleted"] else "") +
                      (f"; kept {', '.join(res['in_progress'])} (still being registered)" if res["in_progress"] else ""))
        return
    if ref is None:
        raise MtgraftError("give a REF (name/version or name@alias), a bare name with --all, or --incomplete")
    if _is_file(ref):
        raise MtgraftError(f"'{ref}' is a local patch file, not a registry entry; nothing to delete")
    res = _registry(opts).delete(ref, all_versions=all_versions)
    if opts["json_out"]:
        print_json(res)
        return
    console.print(f"deleted {res['deleted']}" + (f" ({res['versions']} versions)" if all_versions else ""))


@command(masks_app, "register", registry_options)
def register_cmd(
    patches: list[Path] = typer.Argument(..., help="SkillPatch files, or graft output folders (their results.json "
                                                   "names the patches; it records the registered versions)."),
    run_id: str | None = typer.Option(None, "--run-id", help="MLflow run that produced the patch (the file is "
                                                              "logged there); default: a new registration run."),
    **opts: Any,
) -> None:
    """Register patch files or graft output folders (what 'mtgraft graft' does unless --no-register, or when the
    tracking server was down): all of them, or, on a failure, none (what was registered is rolled back)."""
    from mtgraft.workflows.graft import register_outputs

    reg = _registry(opts)
    res = register_outputs(patches, reg.tracking_uri, run_id=run_id)
    if opts["json_out"]:
        print_json({"tracking_uri": reg.tracking_uri, **res})
        return
    for ref in res["cleaned"]:
        console.print(f"removed {ref} (left incomplete by an earlier registration of the same file)")
    for d in res["skipped"]:
        console.print(f"{d['patch']}: already registered as {d['registered']['name']}/{d['registered']['version']}")
    for d in res["registered"]:
        console.print(f"registered {d['ref']}" + (f" ({', '.join(d['aliases'])})" if d["aliases"] else ""))
