"""``mtgraft patch``: inspect, compare, stitch and apply SkillPatch files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mtgraft.cli.app import app
from mtgraft.cli.common import field_table, handle_errors, print_json, table_out
from mtgraft.errors import MtgraftError
from mtgraft.progress import console

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
    t = field_table(f"SkillPatch · {patch.name}")
    tasks = ", ".join(h.tasks)
    bpp = stats["bytes_per_grafted_param"]
    rows = [
        ("task", tasks),
        ("type", h.model_type),
        ("base model", f"{h.base_model} ({short_hash(h.base_hash)})"),
        ("method", h.method + (f" {h.method_settings}" if h.method_settings else "")),
        *([("rescaled", f"alpha = {h.scale:g}: applying writes base + alpha·(value − base), not the fine-tuned "
                        "values")] if h.scale is not None else []),
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
        ("written by", f"mtgraft {h.code_version.get('mtgraft')} @ {h.code_version.get('git_revision') or '?'}"),
        ("format", f"{h.format} v{h.format_version}"),
        ("sha256", digest),
    ]
    for k, v in rows:
        t.add_row(k, v)
    for k, v in h.metrics.items():
        t.add_row(f"metric {k}", _fmt_metric(v))
    table_out.print(t)
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
    t = field_table(f"{', '.join(pa.header.tasks)} vs {', '.join(pb.header.tasks)}", "metric", justify="right")
    for k, v in out.items():
        if k not in ("a", "b", "task_a", "task_b"):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else f"{v:,}")
    table_out.print(t)
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
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """Graft a patch onto its base model and save the result as a checkpoint folder (usable by ``mtgraft eval``).

    A base model whose graftable tensors differ from the patch's (content hash) is refused.
    """
    from mtgraft.patches import SkillPatch, apply_patches, sha256

    p = SkillPatch.load(patch)
    result = apply_patches([p], to, out, sources=[{"path": str(patch), "sha256": sha256(patch)}])
    if json_out:
        print_json(result)
        return
    h = p.header
    console.print(f"grafted {h.region_size:,} entries (sparsity {h.sparsity:.4g} of the graftable body) "
                  f"+ {h.head_params:,} head params onto {result['base_model']} → [bold]{out}[/]")
