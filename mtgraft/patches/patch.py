"""The SkillPatch: a graft region (sorted flat indices + fine-tuned values), the task head, a header."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from mtgraft.errors import MtgraftError
from mtgraft.patches.header import FORMAT, HEADER_KEY, READ_VERSIONS, PatchHeader, make_header, short_hash
from mtgraft.utils import atomic_file, content_hash

IDX, VAL, HEAD = "idx/", "val/", "head/"
_INDEX_DTYPES = (torch.int32, torch.int64)
#: Largest safetensors header (tensor index + JSON header) a SkillPatch may have. A real one is ~20 kB for
#: MiniLM (about 350 bytes per graftable tensor): 4 MiB is ~12,000 tensors. A larger one is refused unread.
MAX_HEADER_BYTES = 4 * 1024 * 1024


def index_dtype(numel: int) -> torch.dtype:
    """int32 for tensors with fewer than 2**31 entries, else int64."""
    return torch.int32 if numel < 2**31 else torch.int64


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _fmt_shape(shape: tuple[int, ...] | list[int] | torch.Size) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class SkillPatch:
    """A graft region of one (or several, after a union) task(s) on one base model.

    ``indices[name]`` are the sorted unique flat indices selected in graftable tensor ``name``,
    ``values[name]`` the fine-tuned values there, ``head[name]`` the task head's tensors in full.
    Only graftable tensors with at least one selected entry appear in ``indices``/``values``.
    """

    def __init__(self, header: PatchHeader | dict[str, Any], indices: Mapping[str, torch.Tensor],
                 values: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor] | None = None) -> None:
        """Assemble a patch and fill the header's derived fields (region_size, sparsity, head_params)."""
        hdr = header if isinstance(header, PatchHeader) else make_header(header)
        shapes = hdr.shapes()
        self.indices: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        for name in shapes:  # canonical order
            if name not in indices:
                continue
            idx, val = indices[name], values.get(name)
            if val is None:
                raise MtgraftError(f"SkillPatch: tensor '{name}' has indices but no values")
            if idx.numel() == 0:
                continue
            idx64 = idx.detach().to("cpu", torch.long).reshape(-1)
            _check_indices(name, idx64, shapes[name])  # before the cast: a huge int64 must not wrap into range
            self.indices[name] = idx64.to(index_dtype(math.prod(shapes[name])))
            self.values[name] = val.detach().to("cpu").reshape(-1)
        extra = (set(indices) | set(values)) - set(shapes)
        if extra:
            raise MtgraftError(f"SkillPatch: tensor '{sorted(extra)[0]}' is not in the header's graftable set")
        self.head: dict[str, torch.Tensor] = {k: v.detach().to("cpu") for k, v in (head or {}).items()}
        clash = set(self.head) & set(shapes)
        if clash:
            raise MtgraftError(f"SkillPatch: head tensor '{sorted(clash)[0]}' is also a graftable tensor")
        for name, idx in self.indices.items():
            if idx.numel() != self.values[name].numel():
                raise MtgraftError(f"SkillPatch: '{name}' has {idx.numel()} indices but "
                                   f"{self.values[name].numel()} values")
        dtypes = {v.dtype for v in self.values.values()}
        if len(dtypes) > 1:
            raise MtgraftError(f"SkillPatch: values have mixed dtypes {sorted(map(_dtype_name, dtypes))}")
        vdt = _dtype_name(dtypes.pop()) if dtypes else hdr.values_dtype
        region = sum(int(i.numel()) for i in self.indices.values())
        self.header = make_header(
            hdr, region_size=region, sparsity=(region / hdr.graftable_size) if hdr.graftable_size else 0.0,
            head_params=sum(int(t.numel()) for t in self.head.values()), values_dtype=vdt, payload_hash=None,
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                   head: Mapping[str, torch.Tensor], header: dict[str, Any] | PatchHeader) -> SkillPatch:
        """Patch from boolean (or 0/1) masks over graftable tensors and the fine-tuned tensors.

        If ``header`` has no ``graftable`` list, the masks must cover the whole graftable set and
        their order is taken as the canonical order.
        """
        hdr = dict(header.model_dump()) if isinstance(header, PatchHeader) else dict(header)
        if not hdr.get("graftable"):
            hdr["graftable"] = [(name, list(m.shape)) for name, m in masks.items()]
        hdr = make_header(hdr)
        shapes = hdr.shapes()
        indices, values = {}, {}
        for name, mask in masks.items():
            if name not in shapes:
                raise MtgraftError(f"mask for '{name}', which is not in the graftable set")
            if tuple(mask.shape) != shapes[name]:
                raise MtgraftError(f"mask for '{name}' has shape {_fmt_shape(mask.shape)}, "
                                   f"the graftable tensor has {_fmt_shape(shapes[name])}")
            idx = torch.nonzero(mask.detach().reshape(-1).cpu() != 0).reshape(-1)
            if idx.numel() == 0:
                continue
            values[name] = _gather(finetuned, name, shapes[name], idx)
            indices[name] = idx
        return cls(hdr, indices, values, head)

    @classmethod
    def from_flat_indices(cls, flat: np.ndarray | torch.Tensor, finetuned: Mapping[str, torch.Tensor],
                          head: Mapping[str, torch.Tensor], header: dict[str, Any] | PatchHeader) -> SkillPatch:
        """Patch from global flat indices (offsets into the canonical concatenation of ``graftable``)."""
        hdr = make_header(header)
        flat_t = torch.as_tensor(np.asarray(flat, dtype=np.int64)).reshape(-1)
        flat_t = torch.unique(flat_t)  # sorted, unique
        indices, values = {}, {}
        for name, lo, hi, start in _runs(hdr, flat_t):
            idx = flat_t[lo:hi] - start
            indices[name] = idx
            values[name] = _gather(finetuned, name, hdr.shapes()[name], idx)
        return cls(hdr, indices, values, head)

    @classmethod
    def from_flat_values(cls, flat: np.ndarray | torch.Tensor, values: torch.Tensor,
                         head: Mapping[str, torch.Tensor], header: dict[str, Any] | PatchHeader) -> SkillPatch:
        """Patch from sorted unique global flat indices and the values at them (aligned, 1-D)."""
        hdr = make_header(header)
        flat_t = torch.as_tensor(np.asarray(flat, dtype=np.int64)).reshape(-1)
        values = values.reshape(-1)
        if flat_t.numel() != values.numel():
            raise MtgraftError(f"{flat_t.numel()} flat indices but {values.numel()} values")
        if flat_t.numel() > 1 and not bool((flat_t[1:] > flat_t[:-1]).all()):
            raise MtgraftError("flat indices must be sorted and unique")
        indices, vals = {}, {}
        for name, lo, hi, start in _runs(hdr, flat_t):
            indices[name] = flat_t[lo:hi] - start
            vals[name] = values[lo:hi].clone()
        return cls(hdr, indices, vals, head)

    # ------------------------------------------------------------------ queries

    @property
    def region_size(self) -> int:
        """Number of grafted entries in the graftable body (the head is not counted)."""
        return self.header.region_size

    def flat_indices(self) -> np.ndarray:
        """Sorted global flat indices (int64) of the region, in the canonical order of ``graftable``."""
        offs = self.header.offsets()
        parts = [self.indices[n].numpy().astype(np.int64) + offs[n] for n in self.indices]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def flat_values(self) -> torch.Tensor:
        """Values of the region, aligned with :meth:`flat_indices`."""
        parts = [self.values[n] for n in self.indices]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=_torch_dtype(self.header.values_dtype))

    def masks(self, only_patched: bool = False) -> dict[str, torch.Tensor]:
        """Boolean masks (shapes from the header) of every graftable tensor, or only of patched ones."""
        out = {}
        for name, shape in self.header.shapes().items():
            if only_patched and name not in self.indices:
                continue
            m = torch.zeros(math.prod(shape), dtype=torch.bool)
            if name in self.indices:
                m[self.indices[name].long()] = True
            out[name] = m.reshape(shape)
        return out

    def __repr__(self) -> str:
        h = self.header
        return (f"SkillPatch(task={h.task!r}, method={h.method!r}, region_size={h.region_size}, "
                + (f"scale={h.scale:g}, " if h.scale is not None else "") +
                f"sparsity={h.sparsity:.3g}, head_params={h.head_params}, base={short_hash(h.base_hash)})")

    # ------------------------------------------------------------------ apply

    def apply_to_state(self, state: Mapping[str, torch.Tensor], base_hash: str | None = None, *,
                       check_hash: bool = True) -> None:
        """Graft in place: ``state[name].view(-1)[idx] = val`` for the region, heads copied in full.

        With ``check_hash``, the base's hash (``base_hash``, or computed from ``state``'s graftable
        tensors when None) must equal the patch's. Everything is checked before anything changes.
        """
        shapes = self.header.shapes()
        for name in self.indices:
            _check_target(state, name, shapes[name], "grafts")
        for name, t in self.head.items():
            _check_target(state, name, tuple(t.shape), "carries as head")
        if check_hash:
            if base_hash is None:
                for name in shapes:
                    _check_target(state, name, shapes[name], "needs for the base hash")
                base_hash = content_hash((n, state[n]) for n in shapes)
            if base_hash != self.header.base_hash:
                raise MtgraftError(
                    f"patch was made for base model {self.header.base_model} (hash "
                    f"{short_hash(self.header.base_hash)}); this model's hash is {short_hash(base_hash)} "
                    "— apply it to the model it was learned on")
        alpha = self.header.scale
        with torch.no_grad():
            for name, idx in self.indices.items():
                t = state[name]
                ii = idx.to(t.device, torch.long)
                flat = t.view(-1) if t.is_contiguous() else t.reshape(-1).clone()
                if alpha is None:
                    val = self.values[name].to(t.device, t.dtype)
                else:  # a rescaled region: theta_pre + alpha·(val − theta_pre), computed in float32 or wider
                    wide = torch.promote_types(t.dtype, torch.float32)
                    pre = flat[ii].to(wide)
                    val = (pre + alpha * (self.values[name].to(t.device, wide) - pre)).to(t.dtype)
                flat[ii] = val
                if not t.is_contiguous():
                    t.copy_(flat.view(t.shape))
            for name, h in self.head.items():
                state[name].copy_(h)

    def apply_to_model(self, model: torch.nn.Module, base_hash: str | None = None, *,
                       check_hash: bool = True) -> None:
        """Graft in place into ``model``'s parameters (by ``named_parameters()`` names). A TaskModel is
        checked with :meth:`check_base` (layout, base hash, context hash) unless ``base_hash`` is given."""
        if check_hash and base_hash is None and hasattr(model, "context_hash"):
            base_hash = self.check_base(model)
        self.apply_to_state(dict(model.named_parameters()), base_hash, check_hash=check_hash)

    def check_base(self, model: Any, what: str | None = None) -> str:
        """Refuse a base ``model`` (a TaskModel) this patch was not made for; return its base hash.

        Checked in turn: the graftable layout (names and shapes, in order), the base hash of the graftable
        tensors, and — when the header records one (patches from before it have none) — the context hash of
        the other tensors the forward pass uses (embeddings; the LM head of prompt/causal models).
        """
        h, what = self.header, what or f"base model '{getattr(model, 'pretrained_name', '') or '?'}'"
        params = dict(model.named_parameters())
        mine = [(n, tuple(params[n].shape)) for n in model.graftable_names()]
        theirs = [(n, tuple(s)) for n, s in h.graftable]
        if mine != theirs:
            raise MtgraftError(f"{what} has another graftable layout than the patch's base {h.base_model}: "
                               + _layout_difference(mine, theirs))
        got = model.base_hash()
        if got != h.base_hash:
            raise MtgraftError(f"{what} has content hash {short_hash(got)}, but the patches were made for "
                               f"{h.base_model} ({short_hash(h.base_hash)}) — refusing to apply")
        if h.context_hash is not None:
            ctx = model.context_hash()
            if ctx != h.context_hash:
                part = "embeddings" if h.model_type == "head" else "embeddings or LM head"
                raise MtgraftError(f"{what} has the patches' body but other {part} (context hash "
                                   f"{short_hash(ctx)}, the patches need {short_hash(h.context_hash)}) — "
                                   "refusing to apply")
        return got

    # ------------------------------------------------------------------ files

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as stored in the file: ``idx/<name>``, ``val/<name>``, ``head/<name>``."""
        out: dict[str, torch.Tensor] = {}
        for name in self.indices:
            out[IDX + name] = self.indices[name].contiguous()
            out[VAL + name] = self.values[name].contiguous()
        for name, t in self.head.items():
            out[HEAD + name] = t.contiguous()
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the patch as one safetensors file (header JSON in its metadata), atomically."""
        path = Path(path)
        if path.is_dir():
            raise MtgraftError(f"cannot write patch to '{path}': it is a folder (give a file name)")
        tensors = self.tensors()
        self.header = make_header(self.header, payload_hash=content_hash(sorted(tensors.items())))
        meta = {HEADER_KEY: json.dumps(self.header.to_json_dict())}
        data = st_save(tensors, metadata=meta)
        with atomic_file(path, "wb") as f:
            f.write(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SkillPatch:
        """Read and check a patch file; MtgraftError for anything that is not a valid SkillPatch."""
        path = Path(path)
        if not path.exists():
            raise MtgraftError(f"patch file '{path}' does not exist")
        if path.is_dir():
            raise MtgraftError(f"'{path}' is a folder, not a SkillPatch file")
        _check_header_size(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, ValueError, RuntimeError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MtgraftError(f"'{path}' is not a readable SkillPatch (not a safetensors file, "
                               f"truncated or corrupt: {msg})") from None
        if HEADER_KEY not in meta:
            raise MtgraftError(f"'{path}' is a safetensors file but not a SkillPatch "
                               f"(no '{HEADER_KEY}' in its metadata)")
        try:
            raw = json.loads(meta[HEADER_KEY])
        except json.JSONDecodeError as e:
            raise MtgraftError(f"'{path}': SkillPatch header is not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise MtgraftError(f"'{path}' is not a SkillPatch (header format is "
                               f"{raw.get('format') if isinstance(raw, dict) else None!r}, expected '{FORMAT}')")
        ver = raw.get("format_version")
        if ver not in READ_VERSIONS:
            newer = isinstance(ver, int) and ver > max(READ_VERSIONS)
            raise MtgraftError(
                f"'{path}' has SkillPatch format_version {ver!r}; this mtgraft reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}" + (" (upgrade mtgraft to read it)" if newer else ""))
        if ver != READ_VERSIONS[0] and raw.get("scale") in (None, 1.0):
            raise MtgraftError(f"'{path}' has SkillPatch format_version {ver} but no rescaling alpha ('scale')")
        try:
            hdr = make_header(raw)
        except MtgraftError as e:
            raise MtgraftError(f"'{path}': {e}") from None
        if hdr.payload_hash is not None and content_hash(sorted(tensors.items())) != hdr.payload_hash:
            raise MtgraftError(f"'{path}' is corrupt: its tensors do not match the payload hash in its header")
        indices, values, head = {}, {}, {}
        for key, t in tensors.items():
            kind, _, name = key.partition("/")
            if kind + "/" == IDX:
                indices[name] = t
            elif kind + "/" == VAL:
                values[name] = t
            elif kind + "/" == HEAD:
                head[name] = t
            else:
                raise MtgraftError(f"'{path}': unexpected tensor '{key}' (expected idx/, val/ or head/ keys)")
        shapes = hdr.shapes()
        for name in set(indices) | set(values):
            if name not in shapes:
                raise MtgraftError(f"'{path}': tensor '{name}' is not in the header's graftable set")
            if name not in indices or name not in values:
                raise MtgraftError(f"'{path}': tensor '{name}' has {'values' if name in values else 'indices'} "
                                   f"but no {'indices' if name in values else 'values'}")
            idx, val = indices[name], values[name]
            if idx.dtype not in _INDEX_DTYPES or idx.dim() != 1 or val.dim() != 1:
                raise MtgraftError(f"'{path}': idx/{name} must be a 1-D int32/int64 tensor and val/{name} 1-D")
            if idx.numel() != val.numel():
                raise MtgraftError(f"'{path}': idx/{name} has {idx.numel()} entries but val/{name} "
                                   f"has {val.numel()}")
        for key in sorted(tensors):
            t = tensors[key]
            if not key.startswith(IDX) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise MtgraftError(f"'{path}': {key} holds {bad} non-finite value(s) (NaN or inf); "
                                   "grafting them would break the model")
        try:
            patch = cls(hdr, indices, values, head)
        except MtgraftError as e:
            raise MtgraftError(f"'{path}': {e}") from None
        if patch.header.region_size != hdr.region_size:
            raise MtgraftError(f"'{path}': header says region_size {hdr.region_size} but the file holds "
                               f"{patch.header.region_size} entries")
        patch.header = make_header(patch.header, payload_hash=hdr.payload_hash)
        return patch


def _check_indices(name: str, idx: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Flat indices (int64, 1-D) of tensor ``name``: in range, strictly increasing; one clear error otherwise."""
    n = math.prod(shape)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0:
        raise MtgraftError(f"SkillPatch: '{name}' has a negative index ({lo})")
    if hi >= n:
        raise MtgraftError(f"SkillPatch: index {hi} is out of range for '{name}' of shape {_fmt_shape(shape)} "
                           f"({n} entries)")
    if idx.numel() > 1:
        step = idx[1:] - idx[:-1]
        if bool((step < 0).any()):
            at = int(torch.nonzero(step < 0)[0])
            raise MtgraftError(f"SkillPatch: indices of '{name}' are not sorted (position {at + 1}: "
                               f"{int(idx[at + 1])} after {int(idx[at])})")
        if bool((step == 0).any()):
            at = int(torch.nonzero(step == 0)[0])
            raise MtgraftError(f"SkillPatch: indices of '{name}' repeat entry {int(idx[at])}")


def _torch_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    return dt if isinstance(dt, torch.dtype) else torch.float32


def _runs(hdr: PatchHeader, flat_t: torch.Tensor) -> list[tuple[str, int, int, int]]:
    """(name, lo, hi, start) for each graftable tensor that holds some of the sorted global flat indices
    ``flat_t``: they are ``flat_t[lo:hi]``, and ``start`` is the tensor's offset. Out-of-range indices are refused."""
    if flat_t.numel() and (flat_t[0] < 0 or flat_t[-1] >= hdr.graftable_size):
        raise MtgraftError(f"flat index out of range [0, {hdr.graftable_size})")
    runs = []
    for name, (start, stop) in _spans(hdr).items():
        lo, hi = torch.searchsorted(flat_t, torch.tensor([start, stop])).tolist()
        if hi > lo:
            runs.append((name, lo, hi, start))
    return runs


def _spans(hdr: PatchHeader) -> dict[str, tuple[int, int]]:
    offs = hdr.offsets()
    return {n: (offs[n], offs[n] + math.prod(s)) for n, s in hdr.graftable}


def _gather(finetuned: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...],
            idx: torch.Tensor) -> torch.Tensor:
    if name not in finetuned:
        raise MtgraftError(f"the fine-tuned tensors have no '{name}'")
    t = finetuned[name].detach()
    if tuple(t.shape) != shape:
        raise MtgraftError(f"fine-tuned tensor '{name}' has shape {_fmt_shape(t.shape)}, "
                           f"expected {_fmt_shape(shape)}")
    return t.reshape(-1)[idx.to(t.device, torch.long)].to("cpu").clone()


def _layout_difference(mine: list[tuple[str, tuple[int, ...]]], theirs: list[tuple[str, tuple[int, ...]]]) -> str:
    """The first difference between a model's graftable (name, shape) list and a patch's, in words."""
    for (n1, s1), (n2, s2) in zip(mine, theirs, strict=False):
        if n1 != n2:
            return f"tensor '{n2}' in the patch where the model has '{n1}'"
        if s1 != s2:
            return f"'{n1}' has shape {_fmt_shape(s2)} in the patch but {_fmt_shape(s1)} in the model"
    return f"{len(theirs)} graftable tensors in the patch, {len(mine)} in the model"


def _check_header_size(path: Path) -> None:
    """Refuse a file whose safetensors header is larger than :data:`MAX_HEADER_BYTES`, before parsing it."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) == 8:  # a shorter file, or one shorter than its declared header, is refused by the reader
        n = int.from_bytes(head, "little")
        if MAX_HEADER_BYTES < n <= path.stat().st_size - 8:
            raise MtgraftError(f"'{path}' declares a {n / 2**20:.1f} MiB header, more than a SkillPatch header may "
                               f"have ({MAX_HEADER_BYTES // 2**20} MiB) — refusing to read it")


def _check_target(state: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...], what: str) -> None:
    if name not in state:
        raise MtgraftError(f"the model has no parameter '{name}', which the patch {what} "
                           "(is it the same architecture, built for the same task?)")
    got = tuple(state[name].shape)
    if got != tuple(shape):
        raise MtgraftError(f"parameter '{name}' has shape {_fmt_shape(got)} in the model "
                           f"but {_fmt_shape(shape)} in the patch")


def sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a patch file (for registries and provenance)."""
    from mtgraft.utils import sha256_file

    return sha256_file(path)


def file_stats(path: str | os.PathLike, patch: SkillPatch | None = None) -> dict[str, Any]:
    """Sizes of a patch file: total, safetensors header, region data, head data, bytes per grafted param."""
    path = Path(path)
    patch = patch or SkillPatch.load(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_bytes = 8 + int.from_bytes(f.read(8), "little")
    head_bytes = sum(t.numel() * t.element_size() for t in patch.head.values())
    region_bytes = size - header_bytes - head_bytes
    r = patch.region_size
    return {
        "file_bytes": size, "header_bytes": header_bytes, "region_bytes": region_bytes, "head_bytes": head_bytes,
        "bytes_per_grafted_param": (region_bytes / r) if r else None,
    }
