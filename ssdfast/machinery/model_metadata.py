"""What a model file says about its model, checked key by key when the file is loaded.

Every model file names its model and its categories: a checkpoint in its top-level keys, an exported
``.onnx``/``.pt2`` in its ssdfast metadata (``ssdfast.deploy.metadata``). These keys size what is built
and index what is printed (label i is category_names[i - 1]), so a wrong one fails far from the file:
an IndexError for too few names, a TypeError for ``num_classes: "80"``, an allocation for ``10**12``.
``MODEL_RULES`` is the one table of what each key must be; a value that breaks its rule is one error
naming the key and the file (``problem``). The class count must also be the one the weights' class
heads have (checked where the weights are read: ``ssdfast.machinery.checkpoint.checkpoint_metadata``,
``ssdfast.deploy.deployed``).
"""

from __future__ import annotations

import reprlib

from ssdfast.models.registry import MODELS

MAX_CLASSES = 10_000  # above any detection dataset's count (LVIS 1203, Open Images 601, Objects365 365)
MAX_NAME_CHARS = 256  # a category name is printed in every detection record and drawn on pictures
MAX_CATEGORY_ID = 2**63 - 1  # COCO's ids are int64 in pycocotools' arrays


def is_int(value, low: int, high: int) -> bool:
    """An int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _names_ok(names, info: dict) -> bool:
    return (
        isinstance(names, (list, tuple))
        and len(names) == info.get("num_classes")
        and all(isinstance(name, str) and len(name) <= MAX_NAME_CHARS for name in names)
    )


def _ids_ok(ids, info: dict) -> bool:
    return ids is None or (
        isinstance(ids, (list, tuple))
        and len(ids) == info.get("num_classes")
        and all(is_int(i, 0, MAX_CATEGORY_ID) for i in ids)
        and len(set(ids)) == len(ids)
    )


# {key: (test(value, the whole metadata), what it must be)}, in the order they are checked (category
# lengths are checked against num_classes, so num_classes comes first).
MODEL_RULES = {
    "model_name": (lambda name, info: isinstance(name, str) and name in MODELS, f"one of {', '.join(MODELS)}"),
    "num_classes": (lambda n, info: is_int(n, 1, MAX_CLASSES), f"an integer in [1, {MAX_CLASSES}]"),
    "category_names": (_names_ok, f"num_classes strings of at most {MAX_NAME_CHARS} characters"),
    "category_ids": (_ids_ok, "null or num_classes distinct integers >= 0"),
}


def problem(info: dict, rules: dict) -> tuple[str, str] | None:
    """(key, what it must be) of the first key of `rules` whose value in `info` breaks its rule (a
    missing key is None), or None if all hold."""
    for key, (ok, must) in rules.items():
        if not ok(info.get(key), info):
            return key, must
    return None


def found(info: dict, key: str) -> str:
    """The value of `key` in `info` for an error line: a short repr (at most 60 characters), or 'missing'."""
    if key not in info:
        return "missing"
    text = reprlib.repr(info[key])
    return text if len(text) <= 60 else text[:57] + "..."
