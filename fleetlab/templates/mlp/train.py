"""
A small multilayer perceptron on the 8x8 digits, in plain NumPy, trained for a fixed wall-clock budget.
This is the file the researcher edits; prepare.py (data and evaluation) is read-only.

Run:  python train.py        (FLEETLAB_TIME_BUDGET seconds of training, default 5; FLEETLAB_SEED, default 0)
"""

import time

import numpy as np

from prepare import NUM_CLASSES, NUM_FEATURES, SEED, TIME_BUDGET, accuracy, evaluate, load_data

# ---------------------------------------------------------------------------
# Hyperparameters

LEARNING_RATE = 0.01    # peak SGD learning rate
MOMENTUM = 0.9          # heavy-ball momentum (0 = plain SGD)
HIDDEN = 64             # width of each hidden layer
DEPTH = 1               # number of hidden layers
BATCH_SIZE = 2**5       # images per optimizer step
WEIGHT_DECAY = 1e-4     # L2 penalty on the weight matrices (biases are not decayed)
INIT_SCALE = 1.0        # multiplier on He-style initialization (std = INIT_SCALE * sqrt(2 / fan_in))
WARMDOWN_RATIO = 0.0    # final fraction of the time budget over which the LR decays linearly to zero
ACTIVATION = "relu"     # hidden nonlinearity: "relu" or "tanh"

# ---------------------------------------------------------------------------
# Model


def init_params(rng):
    """Weights and biases of DEPTH hidden layers plus the output layer."""
    sizes = [NUM_FEATURES] + [HIDDEN] * DEPTH + [NUM_CLASSES]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = rng.standard_normal((fan_in, fan_out)) * INIT_SCALE * np.sqrt(2.0 / fan_in)
        params.append([w, np.zeros(fan_out)])
    return params


def act(z):
    return np.maximum(z, 0.0) if ACTIVATION == "relu" else np.tanh(z)


def act_grad(z, a):
    return (z > 0.0).astype(z.dtype) if ACTIVATION == "relu" else 1.0 - a * a


def forward(params, x):
    """Logits, plus the pre-activations and activations the backward pass needs."""
    zs, acts = [], [x]
    for w, b in params[:-1]:
        z = acts[-1] @ w + b
        zs.append(z)
        acts.append(act(z))
    w, b = params[-1]
    return acts[-1] @ w + b, zs, acts


def loss_and_grads(params, x, y):
    """Mean cross-entropy on the batch and its gradients (weight decay is applied in the update)."""
    logits, zs, acts = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(probs[np.arange(n), y] + 1e-12).mean()
    delta = probs
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads = [None] * len(params)
    for i in range(len(params) - 1, -1, -1):
        w, _ = params[i]
        grads[i] = (acts[i].T @ delta, delta.sum(axis=0))
        if i > 0:
            delta = (delta @ w.T) * act_grad(zs[i - 1], acts[i])
    return loss, grads


def lr_multiplier(progress):
    """1 until the warm-down starts, then linear to 0 at the end of the budget (progress in [0, 1])."""
    if WARMDOWN_RATIO <= 0 or progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    return max(0.0, (1.0 - progress) / WARMDOWN_RATIO)


# ---------------------------------------------------------------------------
# Training


def main():
    t_start = time.perf_counter()
    rng = np.random.default_rng(SEED)
    x_train, y_train, _, _ = load_data()
    params = init_params(rng)
    velocity = [[np.zeros_like(w), np.zeros_like(b)] for w, b in params]
    num_params = sum(w.size + b.size for w, b in params)

    def model_fn(x):
        return forward(params, x)[0]

    order, cursor = rng.permutation(len(y_train)), 0
    step, diverged = 0, False
    t0 = time.perf_counter()
    last_report = t0
    with np.errstate(all="ignore"):  # a diverging run ends with val_loss: nan, not with warnings
        while True:
            now = time.perf_counter()
            elapsed = now - t0
            if elapsed >= TIME_BUDGET:
                break
            if cursor + BATCH_SIZE > len(order):  # new epoch: reshuffle
                order, cursor = rng.permutation(len(y_train)), 0
            idx = order[cursor:cursor + BATCH_SIZE]
            cursor += BATCH_SIZE
            loss, grads = loss_and_grads(params, x_train[idx], y_train[idx])
            if not np.isfinite(loss):
                diverged = True
                break
            lr = LEARNING_RATE * lr_multiplier(elapsed / TIME_BUDGET)
            for (w, b), (gw, gb), (vw, vb) in zip(params, grads, velocity):
                vw *= MOMENTUM
                vw -= lr * (gw + WEIGHT_DECAY * w)
                vb *= MOMENTUM
                vb -= lr * gb
                w += vw
                b += vb
            step += 1
            if now - last_report >= 0.5:  # a progress line every half second
                last_report = now
                print(f"fleetlab: step={step} metric={evaluate(model_fn):.6f} elapsed={elapsed:.2f}", flush=True)
    training_seconds = time.perf_counter() - t0

    val_loss = float("nan") if diverged else evaluate(model_fn)
    val_accuracy = float("nan") if diverged else accuracy(model_fn)
    print("---")
    print(f"val_loss:         {val_loss:.6f}")
    print(f"val_accuracy:     {val_accuracy:.4f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds:    {time.perf_counter() - t_start:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params:       {num_params}")


if __name__ == "__main__":
    main()
