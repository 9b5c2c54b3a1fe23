"""Knobs: reading and rewriting UPPERCASE constants, the inferred search space, constraints and sampling."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from fleetlab.errors import ConfigError, ProposalRejected
from fleetlab.knobs import Knob, Space, apply_knobs, format_value, infer_space, read_constants, read_knobs

# ---------------------------------------------------------------------------
# Sources

MLP = '''"""A small MLP."""
import numpy as np

LEARNING_RATE = 0.1     # peak learning rate
HIDDEN = 64             # hidden width
BATCH_SIZE = 2**7       # examples per step
WEIGHT_DECAY = 1e-4     # L2 penalty
EPOCHS = 3
SHIFT = -0.5            # a negative number
BUFFER = 8 * 1024       # a product of literals
USE_BIAS = True
ACTIVATION = 'relu'     # "relu" or "tanh"
DROPOUT: float = 0.1    # annotated
SEED = 0                # read, never searched
LAYERS = [64, 64]       # a list: a constant, not a knob
NAMES = ("a", "b")      # a tuple of strings: not a knob
NOTHING = None
SCALED_LR = LEARNING_RATE * 2   # an expression: a constant, not a knob
PATH = f"{HIDDEN}.npz"
OVERRIDDEN = 1.0
OVERRIDDEN = 2.0        # assigned a literal twice: not a knob
GROWN = 4
GROWN = GROWN * 2       # reassigned from itself: the first assignment still matters
A = B = 5               # chained: not a knob
C, D = 1, 2             # unpacking: not a knob
lowercase = 0.5
_PRIVATE = 0.5

if HIDDEN > 32:
    INSIDE_IF = 1


def train():
    LOCAL = 3
    return LOCAL


class Model:
    WIDTH = 16
'''

MLP_KNOBS = {"LEARNING_RATE": 0.1, "HIDDEN": 64, "BATCH_SIZE": 128, "WEIGHT_DECAY": 1e-4, "EPOCHS": 3, "SHIFT": -0.5,
             "BUFFER": 8192, "USE_BIAS": True, "ACTIVATION": "relu", "DROPOUT": 0.1, "SEED": 0, "GROWN": 4}

# The original autoresearch train.py's constants, with its comments and some odd spacing of our own.
AUTORESEARCH = '''"""
Autoresearch pretraining script. Single-GPU, single-file.
"""

import os
import time

import torch
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64  # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128  # target head dimension for attention
WINDOW_PATTERN = "SSSL"  # sliding window pattern: L=full, S=half context

# Optimization
TOTAL_BATCH_SIZE = 2**19  # ~524K tokens per optimizer step
EMBEDDING_LR   = 0.6    # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004  # learning rate for lm_head (Adam)
MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
SCALAR_LR=0.5           # learning rate for per-layer scalars (Adam)
WEIGHT_DECAY = 0.2  # cautious weight decay for Muon
ADAM_BETAS = (0.8,  0.95)  # Adam beta1, beta2
WARMUP_RATIO = 0.0  # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5  # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0  # final LR as fraction of initial

# Model size
DEPTH = 8  # number of transformer layers
DEVICE_BATCH_SIZE = 128  # per-device batch size (reduce if OOM)

MODEL_DIM = DEPTH * ASPECT_RATIO   # derived: a constant for constraints, not a knob


def build_model_config(depth):
    model_dim = depth * ASPECT_RATIO
    num_heads = max(1, model_dim // HEAD_DIM)
    return model_dim, num_heads


t_start = time.time()
torch.manual_seed(42)
print(f"val_bpb:          {0.0:.6f}")
'''

AUTORESEARCH_KNOBS = {
    "ASPECT_RATIO": 64, "HEAD_DIM": 128, "WINDOW_PATTERN": "SSSL", "TOTAL_BATCH_SIZE": 524288, "EMBEDDING_LR": 0.6,
    "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5, "WEIGHT_DECAY": 0.2, "ADAM_BETAS[0]": 0.8,
    "ADAM_BETAS[1]": 0.95, "WARMUP_RATIO": 0.0, "WARMDOWN_RATIO": 0.5, "FINAL_LR_FRAC": 0.0, "DEPTH": 8,
    "DEVICE_BATCH_SIZE": 128,
}

BATCH_CONSTRAINT = "TOTAL_BATCH_SIZE % (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) == 0"
PREPARE = {"MAX_SEQ_LEN": 2048, "TIME_BUDGET": 300}


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs; asserts the texts differ only line-for-line (no lines added or removed)."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def one_sentence(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text
    return text


# ---------------------------------------------------------------------------
# Reading


def test_read_mlp_literals_only_at_module_level():
    knobs = read_knobs(MLP)
    assert knobs == MLP_KNOBS
    assert list(knobs) == list(MLP_KNOBS)  # file order
    assert type(knobs["BATCH_SIZE"]) is int and type(knobs["BUFFER"]) is int
    assert type(knobs["USE_BIAS"]) is bool and type(knobs["LEARNING_RATE"]) is float


def test_read_autoresearch():
    assert read_knobs(AUTORESEARCH) == AUTORESEARCH_KNOBS


def test_read_returns_a_fresh_dict():
    read_knobs(AUTORESEARCH)["MATRIX_LR"] = 99.0
    assert read_knobs(AUTORESEARCH)["MATRIX_LR"] == 0.04


def test_read_rejects_invalid_python():
    with pytest.raises(ProposalRejected) as e:
        read_knobs("LR = 0.1\ndef broken(:\n")
    assert "line 2" in one_sentence(e.value)


def test_non_ascii_and_crlf_positions():
    src = 'NAME = "héllo wörld"; LR = 0.5  # λ\r\nDEPTH = 4\r\n'
    assert read_knobs(src) == {"NAME": "héllo wörld", "LR": 0.5, "DEPTH": 4}
    out = apply_knobs(src, {"LR": 0.25, "DEPTH": 8, "NAME": "ünï"})
    assert out == 'NAME = "ünï"; LR = 0.25  # λ\r\nDEPTH = 8\r\n'


# ---------------------------------------------------------------------------
# Rewriting


def test_apply_power_of_two_keeps_the_comment():
    out = apply_knobs(AUTORESEARCH, {"TOTAL_BATCH_SIZE": 262144})
    assert changed_lines(AUTORESEARCH, out) == [
        ("TOTAL_BATCH_SIZE = 2**19  # ~524K tokens per optimizer step\n",
         "TOTAL_BATCH_SIZE = 2**18  # ~524K tokens per optimizer step\n")]


def test_apply_many_changes_only_those_values():
    out = apply_knobs(AUTORESEARCH, {"MATRIX_LR": 0.1 + 0.2, "ADAM_BETAS[1]": 0.99, "WINDOW_PATTERN": "SSLL",
                                     "DEPTH": 12.0, "SCALAR_LR": 1, "UNEMBEDDING_LR": 0.004})
    assert changed_lines(AUTORESEARCH, out) == [
        ('WINDOW_PATTERN = "SSSL"  # sliding window pattern: L=full, S=half context\n',
         'WINDOW_PATTERN = "SSLL"  # sliding window pattern: L=full, S=half context\n'),
        ("MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)\n",
         "MATRIX_LR = 0.3        # learning rate for matrix parameters (Muon)\n"),
        ("SCALAR_LR=0.5           # learning rate for per-layer scalars (Adam)\n",
         "SCALAR_LR=1.0           # learning rate for per-layer scalars (Adam)\n"),
        ("ADAM_BETAS = (0.8,  0.95)  # Adam beta1, beta2\n", "ADAM_BETAS = (0.8,  0.99)  # Adam beta1, beta2\n"),
        ("DEPTH = 8  # number of transformer layers\n", "DEPTH = 12  # number of transformer layers\n"),
    ]
    knobs = read_knobs(out)
    assert knobs["DEPTH"] == 12 and type(knobs["DEPTH"]) is int
    assert knobs["MATRIX_LR"] == 0.3 and knobs["SCALAR_LR"] == 1.0 and type(knobs["SCALAR_LR"]) is float


def test_apply_whole_tuple_and_unchanged_values():
    out = apply_knobs(AUTORESEARCH, {"ADAM_BETAS": (0.9, 0.95)})
    assert changed_lines(AUTORESEARCH, out) == [("ADAM_BETAS = (0.8,  0.95)  # Adam beta1, beta2\n",
                                                 "ADAM_BETAS = (0.9,  0.95)  # Adam beta1, beta2\n")]
    assert apply_knobs(AUTORESEARCH, AUTORESEARCH_KNOBS) == AUTORESEARCH
    assert apply_knobs(AUTORESEARCH, {}) == AUTORESEARCH
    with pytest.raises(ProposalRejected):
        apply_knobs(AUTORESEARCH, {"ADAM_BETAS": (0.9, 0.95, 0.99)})


def test_apply_mlp_styles():
    out = apply_knobs(MLP, {"WEIGHT_DECAY": 2e-4, "BATCH_SIZE": 64, "BUFFER": 16384, "SHIFT": -0.25,
                            "ACTIVATION": "tanh", "USE_BIAS": False, "HIDDEN": 96, "DROPOUT": 0.2})
    pairs = dict(changed_lines(MLP, out))
    assert pairs["WEIGHT_DECAY = 1e-4     # L2 penalty\n"] == "WEIGHT_DECAY = 2e-4     # L2 penalty\n"
    assert pairs["BATCH_SIZE = 2**7       # examples per step\n"] == "BATCH_SIZE = 2**6       # examples per step\n"
    assert pairs["BUFFER = 8 * 1024       # a product of literals\n"] == "BUFFER = 16384       # a product of literals\n"
    assert pairs["SHIFT = -0.5            # a negative number\n"] == "SHIFT = -0.25            # a negative number\n"
    assert pairs["ACTIVATION = 'relu'     # \"relu\" or \"tanh\"\n"] == "ACTIVATION = 'tanh'     # \"relu\" or \"tanh\"\n"
    assert pairs["USE_BIAS = True\n"] == "USE_BIAS = False\n"
    assert pairs["DROPOUT: float = 0.1    # annotated\n"] == "DROPOUT: float = 0.2    # annotated\n"
    assert len(pairs) == 8
    assert read_knobs(out) == {**MLP_KNOBS, "WEIGHT_DECAY": 2e-4, "BATCH_SIZE": 64, "BUFFER": 16384, "SHIFT": -0.25,
                               "ACTIVATION": "tanh", "USE_BIAS": False, "HIDDEN": 96, "DROPOUT": 0.2}


def test_apply_power_of_two_to_a_non_power_is_written_plainly():
    out = apply_knobs(MLP, {"BATCH_SIZE": 96})
    assert "BATCH_SIZE = 96       # examples per step\n" in out


@pytest.mark.parametrize("values, reason", [
    ({"NOT_A_KNOB": 1}, "unknown-knob"),
    ({"lowercase": 1.0}, "unknown-knob"),
    ({"INSIDE_IF": 2}, "unknown-knob"),
    ({"HIDDEN": 64.5}, "bad-value"),
    ({"HIDDEN": True}, "bad-value"),
    ({"HIDDEN": "64"}, "bad-value"),
    ({"ACTIVATION": 3}, "bad-value"),
    ({"USE_BIAS": 1}, "bad-value"),
    ({"LEARNING_RATE": float("nan")}, "bad-value"),
])
def test_apply_rejects_unknown_names_and_wrong_types(values, reason):
    with pytest.raises(ProposalRejected) as e:
        apply_knobs(MLP, values)
    assert e.value.reason == reason
    one_sentence(e.value)


def test_apply_rewrites_an_expression_constant_as_a_literal():
    out = apply_knobs(MLP, {"SCALED_LR": 0.3})
    assert "SCALED_LR = 0.3   # an expression: a constant, not a knob\n" in out
    assert read_knobs(out)["SCALED_LR"] == 0.3


def test_chained_rewrites_read_back_like_a_fresh_parse():
    rng = random.Random(1)
    space = infer_space(AUTORESEARCH)
    text = AUTORESEARCH
    for _ in range(30):
        config = space.sample(rng, around=read_knobs(text), scale=0.5)
        text = apply_knobs(text, config)
        # text + "\n" is a text never seen before, so it is parsed afresh rather than taken from apply's cache
        assert read_knobs(text) == read_knobs(text + "\n") == config | {}
    assert text.count("\n") == AUTORESEARCH.count("\n")
    assert "# ~524K tokens per optimizer step\n" in text and "def build_model_config(depth):\n" in text


@pytest.mark.parametrize("value, like, text", [
    (0.1 + 0.2, None, "0.3"),
    (0.04, "0.04", "0.04"),
    (2.0, None, "2.0"),
    (1 / 3, None, "0.333333333333"),
    (2e-4, "1e-4", "2e-4"),
    (2.5e-5, "1e-4", "2.5e-5"),
    (0.3, "1e-4", "0.3"),
    (1e-05, None, "1e-5"),
    (1e16, None, "1e16"),
    (-0.25, "-0.5", "-0.25"),
    (262144, "2**19", "2**18"),
    (262144, "2 ** 19", "2 ** 18"),
    (262144, "524288", "262144"),
    (96, "2**7", "96"),
    (16384, "8 * 1024", "16384"),
    (1_000_000, "500_000", "1_000_000"),
    (0.125, "2**-4", "2**-3"),
    (True, None, "True"),
    ("SSLL", '"SSSL"', '"SSLL"'),
    ("SSLL", "'SSSL'", "'SSLL'"),
    ('say "hi"', '"x"', "'say \"hi\"'"),
])
def test_format_value(value, like, text):
    assert format_value(value, like=like) == text
    if not isinstance(value, str):
        assert eval(text) == pytest.approx(value, rel=1e-11)  # noqa: S307 - literals only


# ---------------------------------------------------------------------------
# The inferred space


def test_infer_autoresearch_space():
    space = infer_space(AUTORESEARCH)
    k = space.knobs
    assert k["TOTAL_BATCH_SIZE"] == Knob("TOTAL_BATCH_SIZE", 524288, "pow2",
                                         choices=(131072, 262144, 524288, 1048576, 2097152))
    assert k["HEAD_DIM"].kind == "pow2" and k["DEPTH"].choices == (2, 4, 8, 16, 32)
    assert (k["MATRIX_LR"].low, k["MATRIX_LR"].high, k["MATRIX_LR"].log) == (0.01, 0.16, True)
    assert (k["UNEMBEDDING_LR"].low, k["UNEMBEDDING_LR"].high) == (0.001, 0.016)
    assert (k["SCALAR_LR"].low, k["SCALAR_LR"].high, k["SCALAR_LR"].log) == (0.125, 2.0, True)
    assert (k["ADAM_BETAS[1]"].low, k["ADAM_BETAS[1]"].high, k["ADAM_BETAS[1]"].log) == (0.8, 0.999, False)
    assert k["ADAM_BETAS[1]"].log1m and k["ADAM_BETAS[0]"].log1m and not k["MATRIX_LR"].log1m
    assert (k["ADAM_BETAS[0]"].low, k["ADAM_BETAS[0]"].high) == (0.2, 0.999)
    assert (k["WARMDOWN_RATIO"].low, k["WARMDOWN_RATIO"].high, k["WARMDOWN_RATIO"].log) == (0.0, 1.0, False)
    assert (k["WARMUP_RATIO"].low, k["WARMUP_RATIO"].high) == (0.0, 0.25)
    assert (k["FINAL_LR_FRAC"].low, k["FINAL_LR_FRAC"].high) == (0.0, 0.25)
    assert k["WINDOW_PATTERN"] == Knob("WINDOW_PATTERN", "SSSL", "str", choices=("SSSL",))
    assert set(k) == set(AUTORESEARCH_KNOBS)
    assert space.constants["MODEL_DIM"] == 512 and space.constants["ADAM_BETAS"] == (0.8, 0.95)


def test_infer_mlp_space():
    space = infer_space(MLP)
    k = space.knobs
    assert k["HIDDEN"].choices == (16, 32, 64, 128, 256) and k["BATCH_SIZE"].kind == "pow2"
    assert (k["EPOCHS"].kind, k["EPOCHS"].low, k["EPOCHS"].high) == ("int", 2, 4)
    assert (k["WEIGHT_DECAY"].low, k["WEIGHT_DECAY"].high, k["WEIGHT_DECAY"].log) == (2.5e-5, 4e-4, True)
    assert (k["SHIFT"].low, k["SHIFT"].high, k["SHIFT"].log) == (-2.0, -0.125, False)
    assert (k["DROPOUT"].low, k["DROPOUT"].high) == (0.0, 0.35)
    assert k["USE_BIAS"].choices == (True, False) and k["ACTIVATION"].choices == ("relu",)
    assert "SEED" not in k and space.fixed == {"SEED": 0}


@pytest.mark.parametrize("value, low, high", [(1, 1, 2), (3, 2, 4), (100, 50, 150), (0, 0, 1), (-6, -9, -3)])
def test_int_ranges(value, low, high):
    knob = infer_space(f"N = {value}\n").knobs["N"]
    assert (knob.kind, knob.low, knob.high) == ("int", low, high)


def test_zero_float_and_momentum():
    k = infer_space("ALPHA = 0.0\nMOMENTUM = 0.9\nGAMMA = 0.99\n").knobs
    assert (k["ALPHA"].low, k["ALPHA"].high, k["ALPHA"].log) == (0.0, 0.1, False)
    assert (k["MOMENTUM"].low, k["MOMENTUM"].high) == (0.6, 0.999)
    assert (k["GAMMA"].low, k["GAMMA"].high) == (0.96, 0.999)


def test_betas_are_searched_on_a_log_one_minus_scale():
    """0.9 -> 0.99 is as far as 0.99 -> 0.999 (averaging horizons of 10, 100, 1000 steps): draws, neighbours and the
    strategies' unit positions are uniform in log(1 - x), not in x."""
    import math
    import random

    from fleetlab.strategies._results import from_unit, unit

    space = infer_space("MUON_BETA2 = 0.95\nLR = 0.01\n",
                        overrides={"MUON_BETA2": {"low": 0.9, "high": 0.999}})
    k = space.knobs["MUON_BETA2"]
    assert k.log1m and not k.log and (k.low, k.high) == (0.9, 0.999)
    assert abs(unit(space, "MUON_BETA2", 0.99) - 0.5) < 1e-9 and abs(unit(space, "MUON_BETA2", 0.9)) < 1e-12
    assert from_unit(space, "MUON_BETA2", 0.75) == 0.9968  # 1 - 10**-2.5, to 4 digits
    rng = random.Random(0)
    draws = [space.sample(rng)["MUON_BETA2"] for _ in range(3000)]
    above = sum(x > 0.99 for x in draws) / len(draws)  # uniform in log(1 - x): half of the draws; linear: 1/11
    assert 0.45 < above < 0.55
    near = [space.sample(rng, around={"MUON_BETA2": 0.995, "LR": 0.01}, scale=0.3)["MUON_BETA2"] for _ in range(500)]
    assert max(abs(math.log(1 - x) - math.log(0.005)) for x in near) < 3.0  # steps sized on the log(1 - x) axis
    # an override may switch it off, and cannot ask for it where 1 - x is not positive or with a log range too
    assert not infer_space("MUON_BETA2 = 0.95\n", overrides={"MUON_BETA2": {"log1m": False}}).knobs["MUON_BETA2"].log1m
    assert not infer_space("MUON_BETA2 = 0.95\n", overrides={"MUON_BETA2": {"high": 1.0}}).knobs["MUON_BETA2"].log1m
    with pytest.raises(ConfigError, match="not below 1"):
        infer_space("MUON_BETA2 = 0.95\n", overrides={"MUON_BETA2": {"high": 1.0, "log1m": True}})
    with pytest.raises(ConfigError, match="also asks for a log range"):
        infer_space("MUON_BETA2 = 0.95\n", overrides={"MUON_BETA2": {"low": 0.5, "log": True, "log1m": True}})


def test_overrides():
    space = infer_space(AUTORESEARCH, overrides={
        "MATRIX_LR": {"low": 0.01, "high": 0.1, "log": True},
        "TOTAL_BATCH_SIZE": {"choices": [131072, 262144]},
        "WINDOW_PATTERN": {"choices": ["SSLL", "LLLL"]},
        "DEVICE_BATCH_SIZE": {"fixed": True},
        "ADAM_BETAS[0]": {"low": 0.7, "high": 0.9},
        "DEPTH": {"low": 4, "high": 64},
        "MODEL_DIM": {"choices": [384, 512, 768]},
        "WARMUP_RATIO": {"high": 0.1},
    })
    k = space.knobs
    assert (k["MATRIX_LR"].low, k["MATRIX_LR"].high, k["MATRIX_LR"].log) == (0.01, 0.1, True)
    assert k["TOTAL_BATCH_SIZE"].choices == (524288, 131072, 262144)  # the current value stays allowed
    assert k["WINDOW_PATTERN"].choices == ("SSSL", "SSLL", "LLLL")
    assert "DEVICE_BATCH_SIZE" not in k and space.fixed["DEVICE_BATCH_SIZE"] == 128
    assert (k["ADAM_BETAS[0]"].low, k["ADAM_BETAS[0]"].high) == (0.7, 0.9)
    assert k["DEPTH"].choices == (4, 8, 16, 32, 64) and k["DEPTH"].kind == "pow2"
    assert k["MODEL_DIM"] == Knob("MODEL_DIM", 512, "int", choices=(384, 512, 768))
    assert (k["WARMUP_RATIO"].low, k["WARMUP_RATIO"].high) == (0.0, 0.1)
    config = space.sample(random.Random(0))
    assert space.violation(config) is None
    out = apply_knobs(AUTORESEARCH, config)
    assert read_knobs(out)["MODEL_DIM"] == config["MODEL_DIM"]


def test_override_a_whole_tuple_and_a_seed():
    space = infer_space(MLP + "BETAS = (0.9, 0.999)\n", overrides={"BETAS": {"fixed": True}, "SEED": {"choices": [1]}})
    assert "BETAS[0]" not in space.knobs and space.fixed["BETAS[1]"] == 0.999
    assert space.knobs["SEED"].choices == (0, 1) and "SEED" not in space.fixed


@pytest.mark.parametrize("overrides, key, words", [
    ({"MISSING_LR": {"low": 0.1, "high": 1.0}}, "knobs.MISSING_LR", "names no UPPERCASE constant of train.py"),
    ({"lowercase": {"fixed": True}}, "knobs.lowercase", "names no UPPERCASE constant"),
    ({"MATRIX_LR": {"lo": 0.1}}, "knobs.MATRIX_LR", "unknown setting 'lo'"),
    ({"MATRIX_LR": {"low": 0.1, "high": 0.01}}, "knobs.MATRIX_LR", "low <= high"),
    ({"MATRIX_LR": {"low": 0.0, "high": 0.1, "log": True}}, "knobs.MATRIX_LR", "not positive"),
    ({"MATRIX_LR": 0.1}, "knobs.MATRIX_LR", "must be a table"),
    ({"MATRIX_LR": {"choices": []}}, "knobs.MATRIX_LR", "non-empty list"),
    ({"DEPTH": {"choices": [4, "eight"]}}, "knobs.DEPTH", "not a value of the same type"),
    ({"WINDOW_PATTERN": {"low": 1, "high": 2}}, "knobs.WINDOW_PATTERN", "give choices instead"),
    ({"TOTAL_BATCH_SIZE": {"low": 3, "high": 3}}, "knobs.TOTAL_BATCH_SIZE", "no power of two"),
])
def test_bad_overrides_are_one_sentence_config_errors(overrides, key, words):
    with pytest.raises(ConfigError) as e:
        infer_space(AUTORESEARCH + "lowercase = 1\n", overrides=overrides)
    assert e.value.key == key
    assert words in one_sentence(e.value)


# ---------------------------------------------------------------------------
# Constraints


def test_constraints_reject_violations():
    space = infer_space(AUTORESEARCH, constraints=[BATCH_CONSTRAINT, "ADAM_BETAS[0] < ADAM_BETAS[1]",
                                                    "MODEL_DIM % HEAD_DIM == 0"], constants=PREPARE)
    assert space.violation({}) is None
    assert space.violation(AUTORESEARCH_KNOBS) is None
    msg = space.violation({"DEVICE_BATCH_SIZE": 512})
    assert msg == (f"constraint {BATCH_CONSTRAINT!r} does not hold with TOTAL_BATCH_SIZE=524288, "
                   "DEVICE_BATCH_SIZE=512, MAX_SEQ_LEN=2048")
    assert "ADAM_BETAS[0] < ADAM_BETAS[1]" in space.violation({"ADAM_BETAS[0]": 0.97})
    # MODEL_DIM = DEPTH * ASPECT_RATIO is recomputed from the config: 2 * 32 = 64 is not a multiple of 128
    assert "MODEL_DIM % HEAD_DIM == 0" in space.violation({"DEPTH": 2, "ASPECT_RATIO": 32})
    assert space.violation({"DEPTH": 4, "ASPECT_RATIO": 32}) is None


def test_bounds_and_names_are_violations():
    space = infer_space(AUTORESEARCH)
    assert space.violation({"MATRIX_LR": 0.5}) == "MATRIX_LR=0.5 is outside its range [0.01, 0.16]"
    assert "is not one of its choices" in space.violation({"DEPTH": 6})
    assert "must be an integer" in space.violation({"DEPTH": 8.0})
    assert "must be a string" in space.violation({"WINDOW_PATTERN": 1})
    assert space.violation({"NOPE": 1}) == "NOPE names no knob of this space"
    assert space.violation({"MODEL_DIM": 512}) is None  # a constant at its own value is fine
    assert "fixed at 512" in space.violation({"MODEL_DIM": 1024})


@pytest.mark.parametrize("constraint, words", [
    ("TOTAL_BATCH_SIZE %% == 0", "is not a valid Python expression"),
    ("TOTAL_BATCH_SIZE % MAX_SEQ_LEN == 0", "names MAX_SEQ_LEN, which is neither a knob nor an UPPERCASE constant"),
    ("DEPTH.__class__ is int", "uses Attribute"),
    ("open('x') is None", "calls something other than"),
    ("[x for x in (1, 2)]", "uses ListComp"),
    ("DEPTH / 0 > 1", "fails on train.py's own values"),
])
def test_bad_constraints_are_one_sentence_config_errors(constraint, words):
    with pytest.raises(ConfigError) as e:
        infer_space(AUTORESEARCH, constraints=[constraint])
    assert e.value.key == "knobs.constraints"
    assert words in one_sentence(e.value)


def test_constraint_functions_are_available():
    space = infer_space(AUTORESEARCH, constraints=["max(DEPTH, 4) * abs(ASPECT_RATIO) <= 2048"])
    assert space.violation({"DEPTH": 32, "ASPECT_RATIO": 128}) is not None
    assert space.violation({"DEPTH": 16, "ASPECT_RATIO": 128}) is None


# ---------------------------------------------------------------------------
# Sampling and clipping


def test_sampling_always_returns_valid_configs():
    space = infer_space(AUTORESEARCH, constraints=[BATCH_CONSTRAINT, "MODEL_DIM % HEAD_DIM == 0"], constants=PREPARE,
                        overrides={"WINDOW_PATTERN": {"choices": ["SSLL", "LLLL"]}})
    rng = random.Random(0)
    configs = [space.sample(rng) for _ in range(300)]
    for config in configs:
        assert set(config) == set(space.knobs) and space.violation(config) is None
        assert type(config["DEPTH"]) is int and type(config["MATRIX_LR"]) is float
    assert len({c["MATRIX_LR"] for c in configs}) > 250
    assert {c["WINDOW_PATTERN"] for c in configs} == {"SSSL", "SSLL", "LLLL"}
    assert [space.sample(random.Random(7)) for _ in range(2)] == [space.sample(random.Random(7))] * 2


def test_sampling_around_a_config_stays_near_it():
    space = infer_space(AUTORESEARCH, constraints=[BATCH_CONSTRAINT], constants=PREPARE)
    rng = random.Random(3)
    base = read_knobs(AUTORESEARCH)
    near = [space.sample(rng, around=base, scale=0.3) for _ in range(200)]
    assert all(space.violation(c) is None for c in near)
    lrs = sorted(c["MATRIX_LR"] for c in near)
    assert 0.025 < lrs[100] < 0.065  # the median stays close to 0.04 (the full range is [0.01, 0.16])
    assert sum(c["DEPTH"] == 8 for c in near) > 100
    assert space.sample(rng, around=base, scale=0.0) == base
    # a start outside the space is clipped into it
    far = space.sample(rng, around={**base, "MATRIX_LR": 5.0, "DEPTH": 1000}, scale=0.0)
    assert far["MATRIX_LR"] == 0.16 and far["DEPTH"] == 32


def test_impossible_constraints_raise():
    space = infer_space("X = 1.0\n", constraints=["X > 100"])
    with pytest.raises(ConfigError) as e:
        space.sample(random.Random(0))
    assert e.value.key == "knobs.constraints"


def test_clip():
    space = infer_space(AUTORESEARCH)
    assert space.clip("MATRIX_LR", 1.0) == 0.16 and space.clip("MATRIX_LR", 0.05) == 0.05
    assert space.clip("DEPTH", 11) == 8 and space.clip("DEPTH", 12) == 16 and space.clip("DEPTH", 1000) == 32
    assert space.clip("WINDOW_PATTERN", "LLLL") == "SSSL"
    assert infer_space("N = 10\n").clip("N", 100.7) == 15
    with pytest.raises(ProposalRejected):
        space.clip("NOPE", 1)


def test_to_dict_is_json():
    space = infer_space(AUTORESEARCH, constraints=[BATCH_CONSTRAINT], constants=PREPARE)
    data = json.loads(json.dumps(space.to_dict()))
    assert data["knobs"]["TOTAL_BATCH_SIZE"]["choices"] == [131072, 262144, 524288, 1048576, 2097152]
    assert data["constraints"] == [BATCH_CONSTRAINT] and data["constants"]["ADAM_BETAS"] == [0.8, 0.95]
    assert Space(knobs={}).to_dict()["knobs"] == {}


# ---------------------------------------------------------------------------
# Speed and the shipped templates


def test_read_and_apply_are_fast():
    space = infer_space(AUTORESEARCH)
    rng = random.Random(0)
    configs = [space.sample(rng) for _ in range(1000)]
    start = time.perf_counter()
    for config in configs:
        assert read_knobs(apply_knobs(AUTORESEARCH, config))["DEPTH"] == config["DEPTH"]
    assert time.perf_counter() - start < 2.0  # ~0.1 s on a laptop; parsing each text with libcst would take minutes


TEMPLATES = Path(__file__).resolve().parents[1] / "fleetlab" / "templates"


@pytest.mark.parametrize("template", ["gpt", "mlp"])
def test_template_train_py_round_trips(template):
    path = TEMPLATES / template / "train.py"
    if not path.exists():
        pytest.skip(f"{path} does not exist yet")
    source = path.read_text()
    knobs = read_knobs(source)
    assert knobs, "a template's train.py should have knobs"
    assert apply_knobs(source, knobs) == source
    space = infer_space(source)
    rng = random.Random(0)
    for i in range(20):
        config = space.sample(rng)
        out = apply_knobs(source, config)
        assert read_knobs(out) == read_knobs(out + "\n") == {**knobs, **config}
        if i < 3:
            compile(out, str(path), "exec")
        changed = [pair for pair in zip(source.splitlines(), out.splitlines()) if pair[0] != pair[1]]
        assert out.count("\n") == source.count("\n") and len(changed) <= len(config)


def test_read_constants_of_a_readonly_file():
    prepare = "MAX_SEQ_LEN = 2048  # context\nEVAL_TOKENS = 40 * 524288\nSPECIAL = [f'<{i}>' for i in range(4)]\n" \
              "VOCAB = 8192\nPADDED = VOCAB + 64\n"
    constants = read_constants(prepare)
    assert constants == {"MAX_SEQ_LEN": 2048, "EVAL_TOKENS": 20971520, "VOCAB": 8192, "PADDED": 8256}
    space = infer_space(AUTORESEARCH, constraints=[BATCH_CONSTRAINT], constants=constants)
    assert space.violation({"TOTAL_BATCH_SIZE": 131072, "DEVICE_BATCH_SIZE": 128}) is not None
    assert read_constants(MLP)["SCALED_LR"] == 0.2 and "PATH" not in read_constants(MLP)


def test_numpy_scalars_from_optimizers_are_accepted():
    np = pytest.importorskip("numpy")
    space = infer_space(AUTORESEARCH)
    config = {"DEPTH": np.int64(16), "MATRIX_LR": np.float64(0.05), "ADAM_BETAS[0]": np.float32(0.75)}
    assert space.violation(config) is None
    knobs = read_knobs(apply_knobs(AUTORESEARCH, config))
    assert type(knobs["DEPTH"]) is int and knobs["DEPTH"] == 16 and knobs["MATRIX_LR"] == 0.05
    assert knobs["ADAM_BETAS[0]"] == 0.75 and type(knobs["ADAM_BETAS[0]"]) is float


def test_huge_expressions_cannot_hang_the_orchestrator():
    src = "BIG = 10**10**10\nHUGE = 'x' * 10**12\nWIDE = 1 << 10**9\nDEPTH = 8\nOK = 2**DEPTH * 3\n"
    start = time.perf_counter()
    constants = read_constants(src)
    assert time.perf_counter() - start < 1.0
    assert constants == {"DEPTH": 8, "OK": 768}
    space = infer_space(src, constraints=["2**DEPTH <= 65536"])
    assert space.violation({"DEPTH": 16}) is None and space.violation({"DEPTH": 32}) is not None
    with pytest.raises(ConfigError) as e:
        infer_space(src, constraints=["DEPTH ** 10**6 > 0"])
    assert "too large" in one_sentence(e.value)


# ---------------------------------------------------------------------------
# fleetlab.toml's [knobs]: one list of keys, checked where the space is built


def test_every_override_key_loads_from_fleetlab_toml(mlp_project: Path):
    """The README's `[knobs] NAME = { low, high, log1m = true }` loads (project.py once kept its own shorter list)."""
    from fleetlab.api import knob_space
    from fleetlab.knobs import OVERRIDE_KEYS
    from fleetlab.project import Project

    toml = mlp_project / "fleetlab.toml"
    toml.write_text(toml.read_text() + "\n[knobs]\nMOMENTUM = { low = 0.5, high = 0.99, log1m = true }\n"
                    "LEARNING_RATE = { low = 0.001, high = 0.1, log = true }\nACTIVATION = { choices = ['relu', 'tanh'] }\n"
                    "DEPTH = { fixed = true }\n")
    assert {"low", "high", "log", "log1m", "choices", "fixed"} == set(OVERRIDE_KEYS)
    space = knob_space(Project.load(mlp_project))
    m = space.knobs["MOMENTUM"]
    assert (m.low, m.high, m.log1m, m.log) == (0.5, 0.99, True, False)
    assert space.knobs["LEARNING_RATE"].log and space.knobs["ACTIVATION"].choices == ("relu", "tanh")
    assert "DEPTH" in space.fixed and "DEPTH" not in space.knobs


@pytest.mark.parametrize("spec, words", [
    ("{ low = 0.5, high = 0.99, log1m = 'yes' }", "knobs.MOMENTUM.log1m must be true or false"),
    ("{ low = 0.5, hihg = 0.99 }", "unknown setting 'hihg'"),
    ("{ low = nan, high = 0.99 }", "knobs.MOMENTUM.low must be a finite number"),
    ("{ low = 0.9, high = 0.5 }", "low <= high"),
])
def test_bad_override_in_fleetlab_toml_names_the_key(mlp_project: Path, spec: str, words: str):
    from fleetlab.project import Project

    toml = mlp_project / "fleetlab.toml"
    toml.write_text(toml.read_text() + f"\n[knobs]\nMOMENTUM = {spec}\n")
    with pytest.raises(ConfigError) as e:
        Project.load(mlp_project)
    assert e.value.key == "knobs.MOMENTUM" and words in one_sentence(e.value)
