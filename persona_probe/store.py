"""ActivationStore: residual activations on disk, sharded, checksummed, resumable.

Layout (docs/DESIGN.md, section 3)::

    store/meta.json             provenance + capture config + fingerprint
    store/items.json            item ids, in the order the index refers to them
    store/progress.json         committed shards with row counts and sha256 per file
    store/index/00000.safetensors           item, position, role, token_id per row
    store/blocks.15.hook_resid_post/00000.safetensors   acts [rows, d_model]

A shard counts only once ``progress.json`` lists it, and that file is replaced atomically after
the shard's files are renamed into place. A killed writer therefore leaves either a committed
shard or an orphan that resume deletes, never a shard that reads as complete but is not.
Reading is memory-mapped: only the rows asked for are copied into memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from persona_probe.artifacts import atomic_write, read_json, sha256_file, write_json
from persona_probe.errors import StoreError

FORMAT_VERSION = 1
META, ITEMS, PROGRESS, INDEX_DIR = "meta.json", "items.json", "progress.json", "index"
ACTS_KEY = "acts"
INDEX_FIELDS = ("item", "position", "role", "token_id")
_ST_DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
              "BF16": (np.uint16, torch.bfloat16), "I64": (np.int64, torch.int64),
              "I32": (np.int32, torch.int32), "I8": (np.int8, torch.int8)}


def shard_name(k: int) -> str:
    return f"{k:05d}.safetensors"


@dataclass(frozen=True)
class ShardRecord:
    rows: int
    sha256: dict[str, str]  # relative file path -> digest


def _load_progress(root: Path) -> list[ShardRecord]:
    if not (root / PROGRESS).is_file():
        return []
    return [ShardRecord(int(s["rows"]), dict(s["sha256"]))
            for s in read_json(root / PROGRESS)["shards"]]


class ActivationStoreWriter:
    """Streaming writer: rows are buffered and written in fixed-size shards per hook point.

    ``meta['fingerprint']`` identifies what is being captured; resuming checks it, so a store
    is never silently extended with rows of a different model, hook or prompt set.
    """

    def __init__(self, root: str | Path, meta: dict, items: list[str], hooks: list[str],
                 d_model: int, shard_rows: int, resume: bool = False, overwrite: bool = False):
        self.root, self.hooks, self.d_model, self.shard_rows = Path(root), hooks, d_model, shard_rows
        if shard_rows < 1:
            raise StoreError("shard_rows must be at least 1")
        self.meta = {**meta, "format_version": FORMAT_VERSION, "hooks": hooks,
                     "d_model": d_model, "shard_rows": shard_rows}
        self._open(items, resume, overwrite)
        self._buf_acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        self._buf_index: dict[str, list[torch.Tensor]] = {f: [] for f in INDEX_FIELDS}
        self._buf_rows = 0

    # -- opening -------------------------------------------------------------------------
    def _open(self, items: list[str], resume: bool, overwrite: bool) -> None:
        root = self.root
        is_store = (root / META).is_file()
        if root.exists() and not is_store and not (root.is_dir() and not any(root.iterdir())):
            raise StoreError(f"{root} exists and is not an activation store; choose another "
                             "output path (nothing was written)")
        if is_store:
            if overwrite:
                shutil.rmtree(root)
            elif resume:
                old = read_json(root / META)
                if old.get("fingerprint") != self.meta.get("fingerprint"):
                    diff = sorted(k for k in set(old) | set(self.meta)
                                  if k not in ("provenance", "fingerprint")
                                  and old.get(k) != self.meta.get(k))
                    raise StoreError(
                        f"cannot resume {root}: it was captured with different settings "
                        f"(differs in: {', '.join(diff) or 'prompt items or model'}); use a new "
                        "output path, or --overwrite to replace it")
                self.shards = _load_progress(root)
                self.complete = bool(read_json(root / PROGRESS).get("complete")) if (
                    root / PROGRESS).is_file() else False
                self._remove_orphans()
                return
            else:
                raise StoreError(f"{root} already holds an activation store; pass --resume to "
                                 "continue it or --overwrite to replace it")
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / ITEMS, items)
        write_json(root / META, self.meta)
        self.shards, self.complete = [], False
        self._write_progress()

    def _remove_orphans(self) -> None:
        """Delete shard files past the last committed shard and stale temporaries."""
        n = len(self.shards)
        for sub in [INDEX_DIR, *self.hooks]:
            d = self.root / sub
            if not d.is_dir():
                continue
            for f in d.iterdir():
                if f.name.endswith(".tmp") or (f.name.endswith(".safetensors")
                                               and int(f.name.split(".")[0]) >= n):
                    f.unlink()

    @property
    def rows_committed(self) -> int:
        return sum(s.rows for s in self.shards)

    def truncate(self, n_shards: int) -> None:
        """Forget committed shards past the first ``n_shards`` (and delete their files)."""
        self.shards = self.shards[:n_shards]
        self._write_progress()
        self._remove_orphans()

    def adopt(self, other: ActivationStore) -> None:
        """Append another store's committed shards (same hooks and width) after this one's,
        as hard links where the filesystem allows (no copy). Each file's sha256 is checked
        first, and the shard counts only once ``progress.json`` lists it, as with ``append``.
        Distributed capture merges its per-rank stores this way."""
        if self._buf_rows:
            raise StoreError("adopt() needs an empty row buffer; call it before append()")
        if other.hooks != self.hooks or other.d_model != self.d_model:
            raise StoreError(f"cannot merge {other.root}: it holds hooks {other.hooks} of width "
                             f"{other.d_model}, this store {self.hooks} of width {self.d_model}")
        for k, rec in enumerate(other.shards):
            g = len(self.shards)
            digests = {}
            for rel, digest in rec.sha256.items():
                other._check(rel, digest)
                new_rel = f"{rel.split('/', 1)[0]}/{shard_name(g)}"
                _link_or_copy(other.root / rel, self.root / new_rel)
                digests[new_rel] = digest
            self.shards.append(ShardRecord(rec.rows, digests))
            self._write_progress()

    # -- writing -------------------------------------------------------------------------
    def append(self, acts: dict[str, torch.Tensor], index: dict[str, torch.Tensor]) -> None:
        """Add rows (same count for every hook and index field) and write any full shards."""
        n = next(iter(index.values())).shape[0]
        for h in self.hooks:
            if acts[h].shape != (n, self.d_model):
                raise StoreError(f"rows for {h} have shape {tuple(acts[h].shape)}, expected "
                                 f"({n}, {self.d_model})")
            self._buf_acts[h].append(acts[h].detach().cpu())
        for f in INDEX_FIELDS:
            self._buf_index[f].append(index[f].to("cpu", torch.int64))
        self._buf_rows += n
        while self._buf_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        acts = {h: torch.cat(self._buf_acts[h]) for h in self.hooks}
        index = {f: torch.cat(self._buf_index[f]) for f in INDEX_FIELDS}
        k = len(self.shards)
        digests = {}
        files = {f"{h}/{shard_name(k)}": {ACTS_KEY: acts[h][:rows].contiguous()} for h in self.hooks}
        files[f"{INDEX_DIR}/{shard_name(k)}"] = {f: index[f][:rows].contiguous() for f in INDEX_FIELDS}
        for rel, tensors in files.items():
            atomic_write(self.root / rel, lambda tmp, t=tensors: save_file(t, str(tmp)))
            digests[rel] = sha256_file(self.root / rel)
        self.shards.append(ShardRecord(rows, digests))
        self._write_progress()
        self._buf_acts = {h: [acts[h][rows:]] for h in self.hooks}
        self._buf_index = {f: [index[f][rows:]] for f in INDEX_FIELDS}
        self._buf_rows -= rows

    def _write_progress(self) -> None:
        write_json(self.root / PROGRESS, {
            "complete": self.complete, "rows": self.rows_committed,
            "shards": [{"rows": s.rows, "sha256": s.sha256} for s in self.shards]})

    def finalize(self, extra_meta: dict | None = None) -> ActivationStore:
        """Write the last partial shard and mark the store complete."""
        if self._buf_rows:
            self._flush(self._buf_rows)
        if extra_meta:
            self.meta.update(extra_meta)
            write_json(self.root / META, self.meta)
        self.complete = True
        self._write_progress()
        return ActivationStore(self.root)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src``'s bytes at ``dst`` atomically: a hard link, or a copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _mmap_safetensors(path: Path) -> dict[str, tuple[np.memmap, torch.dtype]]:
    """Memory-map every tensor of a safetensors file we wrote (no copy until indexed)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = (np.memmap(path, dtype=np_dtype, mode="r", offset=8 + n + start, shape=shape)
               if end > start else np.zeros(shape, dtype=np_dtype))
        out[key] = (arr, torch_dtype)
    return out


def _to_torch(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr).copy())
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class ActivationStore:
    """Read a store: metadata, the row index, and activations by row, shard or random batch.

    ``verify`` checks each file's sha256 the first time it is read ('lazy'), all at open
    ('all'), or never ('none'); a mismatch raises StoreError naming the file.
    """

    def __init__(self, root: str | Path, verify: str = "lazy", allow_incomplete: bool = False):
        self.root = Path(root)
        if not (self.root / META).is_file():
            raise StoreError(f"{self.root} is not an activation store (no {META}); create one "
                             "with `persona-probe capture`")
        if verify not in ("lazy", "all", "none"):
            raise StoreError(f"verify must be lazy, all or none, not {verify!r}")
        try:   # the small JSON files that describe the store; damage there is named
            self.meta: dict = read_json(self.root / META)
            progress = read_json(self.root / PROGRESS)
            self.complete: bool = bool(progress["complete"])
            rows = int(progress["rows"])
            self.shards = _load_progress(self.root)
            self.item_ids: list[str] = read_json(self.root / ITEMS)
            if not (isinstance(self.meta, dict) and isinstance(self.item_ids, list)
                    and isinstance(self.meta.get("hooks"), list)
                    and isinstance(self.meta.get("d_model"), int)):
                raise TypeError("meta.json must hold an object with hooks and d_model, and "
                                "items.json a list")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self.root} is damaged: its {META}, {PROGRESS} or {ITEMS} does "
                             f"not parse ({type(exc).__name__}: {exc}); re-run the capture with "
                             "--overwrite") from None
        if not self.complete and not allow_incomplete:
            raise StoreError(f"{self.root} is incomplete (a capture was interrupted after "
                             f"{rows} rows); finish it with `persona-probe capture "
                             "... --resume`, or open it with allow_incomplete=True")
        self._verify, self._verified = verify, set[str]()
        self._maps: dict[str, dict] = {}
        self.offsets = np.cumsum([0] + [s.rows for s in self.shards])
        if verify == "all":
            for s in self.shards:
                for rel in s.sha256:
                    self._check(rel, s.sha256[rel])

    @property
    def hooks(self) -> list[str]:
        return list(self.meta["hooks"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_rows

    def _check(self, rel: str, digest: str) -> None:
        if rel in self._verified:
            return
        path = self.root / rel
        if not path.is_file():
            raise StoreError(f"{path} is missing from the store; re-run the capture with "
                             "--overwrite")
        if sha256_file(path) != digest:
            raise StoreError(f"{path} is corrupted (sha256 mismatch); re-run the capture with "
                             "--overwrite")
        self._verified.add(rel)

    def _file(self, rel: str, k: int) -> dict:
        if rel not in self._maps:
            if self._verify != "none":
                self._check(rel, self.shards[k].sha256[rel])
            self._maps[rel] = _mmap_safetensors(self.root / rel)
        return self._maps[rel]

    def _hook_dir(self, hook: str) -> str:
        if hook not in self.hooks:
            raise StoreError(f"hook {hook!r} is not in this store; it has {', '.join(self.hooks)}")
        return hook

    def shard(self, hook: str, k: int) -> torch.Tensor:
        arr, dtype = self._file(f"{self._hook_dir(hook)}/{shard_name(k)}", k)[ACTS_KEY]
        return _to_torch(arr, dtype)

    def index(self) -> dict[str, torch.Tensor]:
        """The whole row index (four int64 columns; small next to the activations)."""
        cols: dict[str, list[torch.Tensor]] = {f: [] for f in INDEX_FIELDS}
        for k in range(len(self.shards)):
            m = self._file(f"{INDEX_DIR}/{shard_name(k)}", k)
            for f in INDEX_FIELDS:
                cols[f].append(_to_torch(*m[f]))
        return {f: torch.cat(v) if v else torch.zeros(0, dtype=torch.int64)
                for f, v in cols.items()}

    def rows(self, hook: str, idx: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        """Random access: the activations of the given global row numbers, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise StoreError(f"row numbers must lie in 0..{self.n_rows - 1}")
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        out = None
        for k in np.unique(shard_of):
            sel = np.nonzero(shard_of == k)[0]
            arr, dtype = self._file(f"{self._hook_dir(hook)}/{shard_name(int(k))}", int(k))[ACTS_KEY]
            part = _to_torch(arr[idx[sel] - self.offsets[k]], dtype)
            if out is None:
                out = torch.empty((idx.size, self.d_model), dtype=part.dtype)
            out[torch.from_numpy(sel)] = part
        return out if out is not None else torch.empty((0, self.d_model))

    def all_rows(self, hook: str) -> torch.Tensor:
        return torch.cat([self.shard(hook, k) for k in range(len(self.shards))]) if self.shards \
            else torch.empty((0, self.d_model))

    def iter_batches(self, hook: str, batch_size: int, shuffle: bool = True, seed: int = 0,
                     buffer_rows: int = 65536, drop_last: bool = False,
                     dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
        """Stream batches; with ``shuffle`` shards come in random order through a shuffle buffer
        of ``buffer_rows`` rows, so memory stays bounded however large the store."""
        self._hook_dir(hook)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.shards), generator=gen).tolist() if shuffle \
            else list(range(len(self.shards)))
        buf = torch.empty((0, self.d_model))
        for i, k in enumerate(order):
            shard = self.shard(hook, k)
            buf = torch.cat([buf.to(shard.dtype), shard]) if buf.numel() else shard
            last = i == len(order) - 1
            if buf.shape[0] < buffer_rows and not last:
                continue
            if shuffle:
                buf = buf[torch.randperm(buf.shape[0], generator=gen)]
            keep = 0 if last else min(buffer_rows // 2, buf.shape[0])
            while buf.shape[0] - keep >= batch_size:
                batch, buf = buf[:batch_size], buf[batch_size:]
                yield batch.to(dtype) if dtype else batch
        if buf.shape[0] and not drop_last:
            yield buf.to(dtype) if dtype else buf

    def describe(self) -> str:
        m = self.meta
        prov = m.get("provenance") if isinstance(m.get("provenance"), dict) else {}
        model = m.get("model") if isinstance(m.get("model"), dict) else {}
        lines = [f"ActivationStore {self.root}",
                 f"  complete     {self.complete}",
                 f"  model        {model.get('model')}  revision {model.get('revision')}",
                 f"  hooks        {', '.join(self.hooks)}",
                 f"  positions    {m.get('positions')}",
                 f"  rows         {self.n_rows} x d_model {self.d_model} "
                 f"({m.get('storage_dtype')}) in {len(self.shards)} shards",
                 f"  items        {len(self.item_ids)}",
                 f"  created      {prov.get('created_utc')}  git {prov.get('git_sha')}"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.root)!r}, rows={self.n_rows}, hooks={self.hooks}, "
                f"positions={self.meta.get('positions')!r})")
