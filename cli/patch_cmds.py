"""``mtgraft patch``: inspect, compare, stitch and apply SkillPatch files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.app import app
from cli.common import console, handle_errors, print_json
from mtgraft.errors import MtgraftError

patch_app = typer.Typer(help="Inspect, compare, stitch and apply SkillPatch files.", no_args_is_help=True)
app.add_typer(patch_app, name="patch")

SPARSITY_NOTE = "sparsity is counted over the graftable body; the task head is always grafted and not counted"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _fmt_metric(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@patch_app.command("info")
@handle_errors
def info_cmd(
    patch: Path = typer.Argument(..., help="A SkillPatch file (.safetensors)."),
    json_out: bool = typer.Option(False, "--json", help="Print header + file sizes as one JSON object on stdout."),
) -> None:
    """Show what a patch is: task, base model, method, region size and sparsity, file size, metrics."""
    from mtgraft.patches import SkillPatch, file_stats, sha256, short_hash

    p = SkillPatch.load(patch)
    stats = file_stats(patch, p)
    digest = sha256(patch)
    h = p.header
    if json_out:
        print_json({"path": str(patch), "sha256": digest, "file": stats, "header": h.to_json_dict()})
        return
    t = Table(title=f"SkillPatch · {patch.name}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    tasks = ", ".join(h.tasks)
    bpp = stats["bytes_per_grafted_param"]
    rows = [
        ("task", tasks),
        ("type", h.model_type),
        ("base model", f"{h.base_model} ({short_hash(h.base_hash)})"),
        ("method", h.method + (f" {h.method_settings}" if h.method_settings else "")),
        ("sparsity (graftable body)", f"{h.sparsity:.6g} ({h.sparsity * 100:.4g}%)"
         + (f", requested {h.sparsity_requested:g}" if h.sparsity_requested is not None else "")),
        ("region size", f"{h.region_size:,} of {h.graftable_size:,} graftable entries "
                        f"in {len(p.indices)}/{len(h.graftable)} tensors"),
        ("head params", f"{h.head_params:,} (always grafted)"),
        ("file size", f"{_fmt_bytes(stats['file_bytes'])} (header {_fmt_bytes(stats['header_bytes'])}, "
                      f"head {_fmt_bytes(stats['head_bytes'])})"),
        ("bytes / grafted param", f"{bpp:.2f} (index + {h.values_dtype} value)" if bpp is not None else "-"),
        ("seed", str(h.seed)),
        ("data", ", ".join(f"{k}={v}" for k, v in h.data.items()) or "-"),
        ("fine-tuned", ", ".join(f"{k}={v}" for k, v in h.finetuned.items()) or "-"),
        ("created", f"{h.created_at} · mtgraft {h.code_version.get('mtgraft')} "
                    f"@ {h.code_version.get('git_revision') or '?'}"),
        ("format", f"{h.format} v{h.format_version}"),
        ("sha256", digest),
    ]
    for k, v in rows:
        t.add_row(k, v)
    for k, v in h.metrics.items():
        t.add_row(f"metric {k}", _fmt_metric(v))
    console.print(t)
    console.print(SPARSITY_NOTE)


@patch_app.command("compare")
@handle_errors
def compare_cmd(
    a: Path = typer.Argument(..., help="First SkillPatch."),
    b: Path = typer.Argument(..., help="Second SkillPatch (same base model)."),
    json_out: bool = typer.Option(False, "--json", help="Print the numbers as one JSON object on stdout."),
) -> None:
    """Overlap of two patches' regions: intersection, containment both ways, Jaccard, chance level."""
    from mtgraft.patches import SkillPatch, intersection_size

    pa, pb = SkillPatch.load(a), SkillPatch.load(b)
    inter = intersection_size(pa, pb)
    na, nb, total = pa.region_size, pb.region_size, pa.header.graftable_size
    union = na + nb - inter
    out = {
        "a": str(a), "b": str(b), "task_a": pa.header.task, "task_b": pb.header.task,
        "size_a": na, "size_b": nb, "graftable_size": total, "intersection": inter, "union": union,
        "containment_a_in_b": inter / nb if nb else 0.0,  # |a∩b| / |b| (paper's convention)
        "containment_b_in_a": inter / na if na else 0.0,
        "jaccard": inter / union if union else 0.0,
        "expected_intersection_by_chance": na * nb / total if total else 0.0,
    }
    if json_out:
        print_json(out)
        return
    t = Table(title=f"{', '.join(pa.header.tasks)} vs {', '.join(pb.header.tasks)}", show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    for k, v in out.items():
        if k not in ("a", "b", "task_a", "task_b"):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else f"{v:,}")
    console.print(t)
    console.print("containment_a_in_b = |a∩b| / |b|; chance = |a|·|b| / |P| for random regions of the same sizes")


@patch_app.command("stitch")
@handle_errors
def stitch_cmd(
    patches: list[Path] = typer.Argument(..., help="Two or more SkillPatches of the same base model."),
    out: Path = typer.Option(..., "--out", help="Output SkillPatch file."),
    overlap: str = typer.Option("average", "--overlap",
                                help="Entries set by several patches: average | first | error "
                                     "(sum needs the base tensors: use the Python API)."),
    json_out: bool = typer.Option(False, "--json", help="Print the stitch statistics as one JSON object."),
) -> None:
    """Compose several skills' patches into one (Localize-and-Stitch; overlaps averaged by default)."""
    from mtgraft.patches import SkillPatch, stitch

    if len(patches) < 2:
        raise MtgraftError("stitch needs at least two patches")
    if overlap == "sum":
        raise MtgraftError("--overlap sum needs the base model's tensors; use mtgraft.patches.stitch(..., base=)")
    loaded = [SkillPatch.load(p) for p in patches]
    merged, stats = stitch(loaded, overlap)  # type: ignore[arg-type]
    merged.save(out)
    stats = {**stats, "out": str(out), "sparsity": merged.header.sparsity}
    if json_out:
        print_json(stats)
        return
    console.print(f"stitched {len(loaded)} patches ({', '.join(map(str, stats['tasks']))}) → [bold]{out}[/]: "
                  f"{stats['region_size']:,} entries (sparsity {merged.header.sparsity:.4g} of the graftable "
                  f"body), {stats['overlapping_entries']:,} set by more than one patch ({overlap})")


@patch_app.command("apply")
@handle_errors
def apply_cmd(
    patch: Path = typer.Argument(..., help="A SkillPatch file."),
    to: str | None = typer.Option(None, "--to", help="Base model (name, folder, or an mtgraft checkpoint "
                                                          "folder); default: the base recorded in the patch."),
    out: Path = typer.Option(..., "--out", help="Output checkpoint folder (the grafted model)."),
    check_hash: bool = typer.Option(True, "--check-hash/--no-check-hash",
                                    help="Refuse a model whose graftable tensors differ from the patch's base."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """Graft a patch onto its base model and save the result as a checkpoint folder."""
    from mtgraft.models import (
        CHECKPOINT_META,
        CheckpointMeta,
        TaskInfo,
        build_task_model,
        load_checkpoint,
        save_checkpoint,
    )
    from mtgraft.patches import SkillPatch, sha256

    p = SkillPatch.load(patch)
    h = p.header
    infos = []
    for t in h.tasks:
        if t not in h.tasks_info:
            raise MtgraftError(f"patch header has no tasks_info for task '{t}': cannot build its model")
        infos.append(TaskInfo(name=t, **{k: v for k, v in h.tasks_info[t].items() if k != "name"}))
    target = to or h.base_model
    if (Path(target) / CHECKPOINT_META).is_file():
        model, meta0 = load_checkpoint(target)
        for info in infos:
            if info.name not in model.tasks:
                model.add_task(info)
        pretrained = meta0.pretrained
    else:
        model = build_task_model(target, h.model_type, infos)
        pretrained = {"name": target}
    if model.model_type != h.model_type:
        raise MtgraftError(f"the patch is for a '{h.model_type}' model, '{target}' is a '{model.model_type}' model")
    names = model.graftable_names()
    if check_hash and names != [n for n, _ in h.graftable]:
        raise MtgraftError(f"'{target}' has a different graftable set than the patch's base {h.base_model} "
                           f"({len(names)} vs {len(h.graftable)} tensors)")
    model_hash = model.base_hash()
    p.apply_to_model(model, model_hash, check_hash=check_hash)
    meta = CheckpointMeta(
        model_type=h.model_type, tasks=list(model.tasks.values()), pretrained={**pretrained, "hash": model_hash},
        data=h.data, mode="grafted", metrics=h.metrics,
        patch={"path": str(patch), "sha256": sha256(patch), "task": h.task, "method": h.method,
               "region_size": h.region_size, "sparsity": h.sparsity, "base_hash": h.base_hash},
    )
    save_checkpoint(model, meta, out)
    result = {"checkpoint": str(out), "patch": str(patch), "base_model": target, "base_hash": model_hash,
              "region_size": h.region_size, "sparsity": h.sparsity, "head_params": h.head_params}
    if json_out:
        print_json(result)
        return
    console.print(f"grafted {h.region_size:,} entries (sparsity {h.sparsity:.4g} of the graftable body) "
                  f"+ {h.head_params:,} head params onto {target} → [bold]{out}[/]")
