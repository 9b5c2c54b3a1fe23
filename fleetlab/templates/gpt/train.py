"""
GPT pretraining for a fixed wall-clock budget, single device, single file. The file experiments edit.
Runs on a CUDA GPU at the original autoresearch scale, and on CPU / Apple MPS at a scale that learns in a minute.
Usage: python train.py   (budget from FLEETLAB_TIME_BUDGET, seed from FLEETLAB_SEED)
"""

import os
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
if os.environ.get("FLEETLAB_CACHE_DIR"):  # the worker's own, kept across its experiments: compile once per shape
    _cache = os.environ["FLEETLAB_CACHE_DIR"]
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_cache, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_cache, "triton"))
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")

import contextlib
import gc
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import (MAX_SEQ_LEN, SMALL_SEQ_LEN, SMALL_TIME_BUDGET, SMALL_VOCAB_SIZE, TIME_BUDGET, Tokenizer,
                     data_fingerprint, evaluate_bpb, make_dataloader)

# Attention kernel: Flash Attention 3 when it can be had (Hopper wheels or the kernels hub); else FlexAttention with
# block-sparse sliding-window masks on CUDA (compiled; skips the blocks a window excludes); else PyTorch SDPA with a
# dense mask (CPU, MPS). FLEETLAB_ATTENTION=fa3|flex|sdpa forces one (to compare them).
try:
    from flash_attn_interface import flash_attn_func as fa3_func
    HAS_FA3 = torch.cuda.is_available()
except ImportError:
    try:  # the kernels hub needs the network once; Hopper has its own build (as in the original)
        from kernels import get_kernel
        hopper = torch.cuda.get_device_capability() == (9, 0)
        repo = "varunneal/flash-attention-3" if hopper else "kernels-community/flash-attn3"
        fa3_func = get_kernel(repo).flash_attn_interface.flash_attn_func
        HAS_FA3 = True
    except Exception:  # no CUDA, no `kernels` package, no network
        fa3_func, HAS_FA3 = None, False
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex_attention = torch.compile(flex_attention, dynamic=False)  # eager FlexAttention is a slow reference only
except ImportError:
    create_block_mask = flex_attention = None
attention = os.environ.get("FLEETLAB_ATTENTION") or (
    "fa3" if HAS_FA3 else "flex" if flex_attention is not None and torch.cuda.is_available() else "sdpa")
if {"fa3": not HAS_FA3, "flex": flex_attention is None, "sdpa": False}.get(attention, True):
    sys.exit(f"FLEETLAB_ATTENTION={attention} is not available here; valid choices are fa3 (if installed), flex, sdpa.")

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer, n_layer):
    """Value embeddings on every other layer, always including the last."""
    return layer % 2 == (n_layer - 1) % 2


def rotate(x, cos, sin):
    """Rotary position embedding on (B, T, H, D): rotate pairs (x[i], x[i + D/2]) by position-dependent angles."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def window_mask(T, window, device):
    """The sliding window for one layer: causal, at most `window` positions back. A BlockMask for FlexAttention,
    a boolean (T, T) mask for SDPA."""
    if attention == "flex":
        def causal_window(b, h, q, kv):
            return (q >= kv) & (q - kv <= window)
        return create_block_mask(causal_window, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
    i = torch.arange(T, device=device)
    back = i[:, None] - i[None, :]
    return (back >= 0) & (back <= window)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = min(32, config.n_embd)
        has_ve = has_value_embedding(layer, config.n_layer)
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos_sin, window, mask):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value residual: mix in the token's value embedding, gated per head from the input
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(rotate(q, *cos_sin)), norm(rotate(k, *cos_sin))  # QK-norm
        if attention == "fa3":
            bf16 = torch.bfloat16
            y = fa3_func(q.to(bf16), k.to(bf16), v.to(bf16), causal=True, window_size=(window, 0))
            y = y[0] if isinstance(y, tuple) else y
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if mask is None:  # full causal context: SDPA's flash kernel
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif attention == "flex":  # not an autocast op: give it one dtype (bf16, as autocast gives SDPA)
                bf16 = torch.bfloat16
                y = flex_attention(q.to(bf16), k.to(bf16), v.to(bf16), block_mask=mask)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y = y.transpose(1, 2)
        return self.c_proj(y.contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window, mask):
        x = x + self.attn(norm(x), ve, cos_sin, window, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.windows = self._window_sizes(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))   # scales the residual stream per layer
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))     # mixes the input embedding back in per layer
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, config.n_embd)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        head_dim = config.n_embd // config.n_head
        cos, sin = self._rotary(config.sequence_len * 10, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.masks = {}  # (T, device) -> {window: mask}, built once outside any compiled graph (`build_masks`)

    @staticmethod
    def _window_sizes(config):
        """Per layer attention window from the pattern: L = full context, S = half; the last layer is always L."""
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= {"S", "L"}, f"WINDOW_PATTERN must use S and L, got {pattern!r}"
        long, short = config.sequence_len, config.sequence_len // 2
        windows = [long if pattern[i % len(pattern)] == "L" else short for i in range(config.n_layer)]
        windows[-1] = long
        return windows

    @staticmethod
    def _rotary(seq_len, head_dim, base=10000):
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound giving std 1/sqrt(n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate 2*sigmoid(0) = 1: neutral
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self):
        """FLOPs per token for forward + backward: 6 per matrix weight (embeddings are lookups) plus attention."""
        lookups = self.transformer.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        dense = self.num_params() - lookups - self.resid_lambdas.numel() - self.x0_lambdas.numel()
        T, C = self.config.sequence_len, self.config.n_embd
        attention = sum(12 * C * min(w, T) for w in self.windows)
        return 6 * dense + attention

    def setup_optimizers(self, unembedding_lr, embedding_lr, matrix_lr, scalar_lr, weight_decay, adam_betas, fused):
        """AdamW for embeddings, lm_head and scalars; Muon for the transformer's matrices (one group per shape)."""
        dmodel_lr_scale = (self.config.n_embd / 768) ** -0.5  # AdamW rates were tuned at width 768
        adam = dict(eps=1e-10, weight_decay=0.0)
        adamw = torch.optim.AdamW([
            dict(params=list(self.lm_head.parameters()), lr=unembedding_lr * dmodel_lr_scale, betas=adam_betas, **adam),
            dict(params=list(self.transformer.wte.parameters()), lr=embedding_lr * dmodel_lr_scale, betas=adam_betas, **adam),
            dict(params=list(self.value_embeds.parameters()), lr=embedding_lr * dmodel_lr_scale, betas=adam_betas, **adam),
            dict(params=[self.resid_lambdas], lr=scalar_lr * 0.01, betas=adam_betas, **adam),
            dict(params=[self.x0_lambdas], lr=scalar_lr, betas=(0.96, 0.95), **adam),
        ], fused=fused)
        matrices = list(self.transformer.h.parameters())
        shapes = sorted({tuple(p.shape) for p in matrices})
        muon = Muon([dict(params=[p for p in matrices if tuple(p.shape) == shape], lr=matrix_lr, momentum=0.95,
                          beta2=0.95, weight_decay=weight_decay, ns_steps=5) for shape in shapes])
        assert sum(len(g["params"]) for o in (adamw, muon) for g in o.param_groups) == len(list(self.parameters()))
        optimizers = [adamw, muon]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    def build_masks(self, T, device):
        """The sliding-window masks for sequences of length T (none for FA3, which takes the window as a number)."""
        key = (T, str(device))
        if key not in self.masks:
            windows = set() if attention == "fa3" else {w for w in self.windows if w < T - 1}
            self.masks[key] = {w: window_mask(T, w, device) for w in windows}
        return self.masks[key]

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.size()
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        masks = self.build_masks(T, idx.device)
        x = x0 = norm(self.transformer.wte(idx))
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.windows[i], masks.get(self.windows[i]))
        logits = self.lm_head(norm(x)).float()
        softcap = 15
        logits = softcap * torch.tanh(logits / softcap)  # logit soft-capping
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)


# ---------------------------------------------------------------------------
# Optimizer: Muon for matrices (AdamW comes from torch)
# ---------------------------------------------------------------------------


def muon_update(grads, params, momentum_buffer, second_buffer, momentum, lr, weight_decay, beta2, ns_steps: int):
    """One Muon step on a stack of same-shape matrices (n, rows, cols); hyperparameters are 0-D tensors."""
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp(momentum_buffer, momentum)  # Nesterov
    # Orthogonalize: quintic Newton-Schulz iteration towards U V^T of the update's SVD (bf16 on GPU)
    X = g.bfloat16() if g.is_cuda else g
    tall = X.size(-2) > X.size(-1)
    X = X.mT if tall else X
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-7)
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(ns_steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    g = (X.mT if tall else X).to(params.dtype)
    # NorMuon: even out the scale across rows (or columns) with a running second moment, keeping the overall norm
    rows, cols = g.shape[-2:]
    v = g.square().mean(dim=-1 if rows >= cols else -2, keepdim=True)
    second_buffer.lerp_(v, 1 - beta2)
    scaled = g * second_buffer.clamp_min(1e-10).rsqrt()
    g = scaled * (g.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # Cautious weight decay (only where update and weight agree in sign), then the step
    lr = lr * max(1.0, rows / cols) ** 0.5
    decay = (g * params >= 0) * params
    params.sub_(lr * (g + weight_decay * decay))


class Muon(torch.optim.Optimizer):
    """Muon (momentum, orthogonalized by Newton-Schulz) for 2-D weights; each group holds matrices of one shape."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        self.update = muon_update
        self._t = {k: torch.tensor(0.0) for k in ("momentum", "lr", "weight_decay", "beta2")}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            state = self.state[params[0]]
            grads, stacked = torch.stack([p.grad for p in params]), torch.stack(params)
            if not state:
                rows, cols = grads.shape[-2:]
                state["momentum_buffer"] = torch.zeros_like(grads)
                shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
                state["second_buffer"] = torch.zeros(shape, dtype=grads.dtype, device=grads.device)
            for k, t in self._t.items():  # 0-D tensors: changing values do not recompile
                t.fill_(group[k])
            eager = self.update is muon_update  # compiled: CPU 0-D tensors are fine; eager MPS wants them on device
            t = {k: v.to(grads.device) if eager else v for k, v in self._t.items()}
            self.update(grads, stacked, state["momentum_buffer"], state["second_buffer"], t["momentum"], t["lr"],
                        t["weight_decay"], t["beta2"], group["ns_steps"])
            torch._foreach_copy_(params, list(stacked.unbind(0)))


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; GPU values, scaled down on CPU/MPS below)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64        # model_dim = depth * ASPECT_RATIO (rounded up to a multiple of the head dim)
HEAD_DIM = 128           # target attention head dimension
WINDOW_PATTERN = "SSSL"  # sliding-window pattern over layers: L = full context, S = half context

# Optimization
TOTAL_BATCH_SIZE = 2**19   # tokens per optimizer step
EMBEDDING_LR = 0.6         # learning rate for token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004     # learning rate for lm_head (AdamW)
MATRIX_LR = 0.04           # learning rate for transformer matrices (Muon)
SCALAR_LR = 0.5            # learning rate for per-layer scalars (AdamW)
WEIGHT_DECAY = 0.2         # cautious weight decay for Muon, decayed linearly to 0
ADAM_BETAS = (0.8, 0.95)   # AdamW beta1, beta2
WARMUP_RATIO = 0.0         # fraction of the time budget for LR warm-up
WARMDOWN_RATIO = 0.5       # fraction of the time budget for LR warm-down
FINAL_LR_FRAC = 0.0        # final LR as a fraction of the initial LR

# Model size
DEPTH = 8                  # number of transformer layers
DEVICE_BATCH_SIZE = 128    # sequences per forward/backward pass (reduce if out of memory)

# ---------------------------------------------------------------------------
# Device and scale: the one place where GPU, Apple MPS and CPU differ
# ---------------------------------------------------------------------------

t_start = time.time()
device_type = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
device = torch.device(device_type)
gpu = device_type == "cuda"
if os.environ.get("OMP_NUM_THREADS"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# On CPU/MPS everything shrinks by fixed factors, so the constants above stay meaningful knobs on every device.
seq_len = MAX_SEQ_LEN if gpu else SMALL_SEQ_LEN                                   # 2048 | 256
depth = DEPTH if gpu else max(1, DEPTH // 4)                                      # 8 | 2
head_dim = HEAD_DIM if gpu else max(8, HEAD_DIM // 4)                             # 128 | 32 (fine-grained widths)
vocab_limit = None if gpu else SMALL_VOCAB_SIZE                                   # full BPE | its first 2048 tokens
device_batch_size = DEVICE_BATCH_SIZE if gpu else max(1, DEVICE_BATCH_SIZE // 16)  # 128 | 8 sequences
total_batch_size = TOTAL_BATCH_SIZE if gpu else max(1, TOTAL_BATCH_SIZE // 128)    # 2**19 | 2**12 tokens (16 x 8:
#                                   the batch shrinks like device batch x sequence, so divisibility holds on both)
time_budget = float(os.environ.get("FLEETLAB_TIME_BUDGET") or (TIME_BUDGET if gpu else SMALL_TIME_BUDGET))
use_compile = gpu                       # torch.compile pays on a GPU; on CPU the compile time eats the budget
timed_after = 10 if use_compile else 1  # the first steps (compilation, warm-up) do not count towards the budget
autocast_ctx = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
seed = int(os.environ.get("FLEETLAB_SEED", "42"))

# ---------------------------------------------------------------------------
# Setup: tokenizer, model, optimizer, dataloader
# ---------------------------------------------------------------------------

torch.manual_seed(seed)
if gpu:
    torch.cuda.manual_seed(seed)
    torch.set_float32_matmul_precision("high")

tokenizer = Tokenizer.from_directory(vocab_size=vocab_limit)
vocab_size = tokenizer.get_vocab_size()
print(f"fleetlab: data={data_fingerprint()}", flush=True)  # results are compared only on the same data
token_bytes = tokenizer.token_bytes.to(device)

model_dim = -(-depth * ASPECT_RATIO // head_dim) * head_dim
config = GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=depth, n_head=model_dim // head_dim,
                   n_embd=model_dim, window_pattern=WINDOW_PATTERN)
print(f"Device: {device_type} (threads {torch.get_num_threads()}, attention {attention}, compile {use_compile})")
print(f"Model config: {asdict(config)}")

model = GPT(config).to(device)
model.init_weights()
model.build_masks(seq_len, model.cos.device)  # before compiling (cuda:0, as inputs will be): the graph only reads them
if gpu:  # embeddings in bf16 save memory; they are only looked up
    model.transformer.wte.to(dtype=torch.bfloat16)
    for ve in model.value_embeds.values():
        ve.to(dtype=torch.bfloat16)
num_params = model.num_params()
num_flops_per_token = model.estimate_flops()
print(f"Parameters: {num_params:,}; FLOPs per token: {num_flops_per_token:e}")

tokens_per_fwdbwd = device_batch_size * seq_len
assert total_batch_size % tokens_per_fwdbwd == 0, \
    f"TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * sequence length ({tokens_per_fwdbwd} here)"
grad_accum_steps = total_batch_size // tokens_per_fwdbwd

optimizers = model.setup_optimizers(unembedding_lr=UNEMBEDDING_LR, embedding_lr=EMBEDDING_LR, matrix_lr=MATRIX_LR,
                                    scalar_lr=SCALAR_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS, fused=gpu)
if use_compile:
    optimizers[1].update = torch.compile(muon_update, dynamic=False, fullgraph=True)
    train_model = torch.compile(model, dynamic=False)
else:
    train_model = model

train_loader = make_dataloader(tokenizer, device_batch_size, seq_len, "train", device=device)  # packs on a thread
x, y, epochs = next(train_loader)
print(f"Time budget: {time_budget:.0f}s; tokens per step: {total_batch_size}; gradient accumulation steps: {grad_accum_steps}")

# Schedules, all driven by progress = training time / budget


def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def get_muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95


def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)


def sync():
    if gpu:
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def peak_flops():
    """bf16 dense peak of the GPU, for MFU (0 when unknown: MFU is then reported as 0)."""
    if not gpu:
        return 0.0
    name = torch.cuda.get_device_name()
    table = {"H100": 989.5e12, "H200": 989.5e12, "H800": 989.5e12, "GH200": 989.5e12, "B200": 2250e12,
             "A100": 312e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}
    return next((v for k, v in table.items() if k in name), 0.0)


# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

t_start_training = time.time()
total_training_time = 0.0
smooth_train_loss = 0.0
step = 0
step_times = []  # of the timed steps
last_report = 0.0
window_nats = torch.zeros((), device=device)  # summed train loss and target bytes since the last progress line
window_bytes = torch.zeros((), device=device, dtype=torch.long)
gpu_peak = peak_flops()

while True:
    sync()
    t0 = time.time()
    step_loss = 0.0
    for micro_step in range(grad_accum_steps):
        with autocast_ctx:  # per-token losses: the final evaluation calls the very same compiled graph
            loss = train_model(x, y, reduction="none").mean()
        train_loss = loss.detach()
        step_loss += train_loss / grad_accum_steps
        window_nats += train_loss * y.numel()
        window_bytes += token_bytes[y].sum()
        (loss / grad_accum_steps).backward()
        x, y, epochs = next(train_loader)

    progress = min(total_training_time / time_budget, 1.0)
    lrm = get_lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if "ns_steps" in group:  # Muon
                group["momentum"] = get_muon_momentum(step)
                group["weight_decay"] = get_weight_decay(progress)
        opt.step()
    model.zero_grad(set_to_none=True)

    train_loss_f = float(step_loss)
    if math.isnan(train_loss_f) or train_loss_f > 100:  # fail fast on divergence
        print(f"FAIL: train loss {train_loss_f} at step {step}")
        sys.exit(1)

    sync()
    dt = time.time() - t0
    if step >= timed_after:
        total_training_time += dt
        step_times.append(dt)
    step += 1
    if step == timed_after:
        warmup_seconds = time.time() - t_start_training  # compilation and warm-up, not counted as training

    ema_beta = 0.9
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
    done = step > timed_after and total_training_time >= time_budget

    # Progress, at most every 5 s: the `fleetlab:` line is what the scheduler reads to stop hopeless runs early
    if done or time.time() - last_report >= 5:
        last_report = time.time()
        bpb_estimate = window_nats.item() / (math.log(2) * max(1, window_bytes.item()))
        window_nats.zero_()
        window_bytes.zero_()
        debiased = smooth_train_loss / (1 - ema_beta**step)
        tok_per_sec = int(total_batch_size / dt)
        mfu = 100 * num_flops_per_token * total_batch_size / dt / gpu_peak if gpu_peak else 0.0
        print(f"step {step:05d} ({100 * progress:.1f}%) | loss: {debiased:.6f} | lrm: {lrm:.2f} | dt: {dt * 1000:.0f}ms | "
              f"tok/sec: {tok_per_sec:,} | mfu: {mfu:.1f}% | epochs: {epochs:.3f} | "
              f"remaining: {max(0.0, time_budget - total_training_time):.0f}s")
        print(f"fleetlab: step={step} metric={bpb_estimate:.6f} elapsed={total_training_time:.1f}", flush=True)

    if step == 1:  # Python's GC causes long stalls; freeze what exists and collect rarely
        gc.collect()
        gc.freeze()
        gc.disable()
    elif step % 5000 == 0:
        gc.collect()

    if done:
        break

total_tokens = step * total_batch_size
train_epochs = epochs  # of the batch after the last: what training has seen, packed one batch ahead
del train_loader

# Final evaluation (the fixed metric from prepare.py). Compiled: the training graph itself, same shapes, same grad
# mode and train flag (the model has no dropout), so nothing compiles again. Eager: no autograd.
t_eval = time.time()
with autocast_ctx:
    val_bpb = evaluate_bpb(train_model, tokenizer, device_batch_size, grad_mode=use_compile)
sync()
eval_seconds = time.time() - t_eval

# Final summary
t_end = time.time()
timed_steps = step - timed_after
steady_mfu = (100 * num_flops_per_token * total_batch_size * timed_steps / total_training_time / gpu_peak
              if gpu_peak and total_training_time > 0 else 0.0)
if gpu:
    peak_memory_mb = torch.cuda.max_memory_allocated() / 1024 / 1024
elif device_type == "mps":
    peak_memory_mb = torch.mps.driver_allocated_memory() / 1024 / 1024
else:  # CPU: the process's peak resident memory (KiB on Linux, bytes on macOS)
    import resource
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)

print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_memory_mb:.1f}")
print(f"mfu_percent:      {steady_mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {depth}")
print(f"epochs:           {train_epochs:.4f}")
print(f"step_ms:          {1000 * sorted(step_times)[len(step_times) // 2]:.1f}")
print(f"timed_steps:      {timed_steps}")
print(f"warmup_seconds:   {warmup_seconds:.1f}")
print(f"eval_seconds:     {eval_seconds:.1f}")
