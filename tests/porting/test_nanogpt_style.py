"""A nanoGPT-style model and train loop (issue #14): plain PyTorch code whose only change is the import lines."""

import inspect
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pytest

import conch as torch
import conch.nn as nn
from conch.nn import functional as F

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# ---------------------------------------------------------------------------------------------------------------
# the program: written the way nanoGPT's model.py and train.py are, with the same calls (not their text)
# ---------------------------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention") and config.flash
        if not self.flash:
            mask = torch.tril(torch.ones(config.block_size, config.block_size))
            self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.flash:
            y = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
            )
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = True
    flash: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        device = idx.device
        b, t = idx.size()
        assert t <= self.config.block_size, f"Cannot forward sequence of length {t}"
        pos = torch.arange(0, t, dtype=torch.long, device=device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # the list keeps the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        for block in self.transformer.h:
            if hasattr(block.attn, "bias"):
                block.attn.bias = block.attn.bias[:, :, :block_size, :block_size]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters()}
        param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        num_decay_params = sum(p.numel() for p in decay_params)
        num_nodecay_params = sum(p.numel() for p in nodecay_params)
        print(f"decayed tensors: {len(decay_params)} with {num_decay_params:,} parameters")
        print(f"non-decayed tensors: {len(nodecay_params)} with {num_nodecay_params:,} parameters")
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == "cuda"
        extra_args = dict(fused=True) if use_fused else dict()
        optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)
        return optimizer

    def estimate_mfu(self, fwdbwd_per_iter, dt):
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_iter = (6 * N + 12 * L * H * Q * T) * T * fwdbwd_per_iter
        return flops_per_iter * (1.0 / dt) / 312e12

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def write_dataset(data_dir, vocab_size, n_tokens):
    """Random tokens with a learnable rule (each token predicts the next) in nanoGPT's uint16 .bin layout."""
    rng = np.random.default_rng(0)
    steps = rng.integers(1, 3, size=n_tokens)
    tokens = (np.cumsum(steps) % vocab_size).astype(np.uint16)
    for split, part in (("train", tokens[: n_tokens * 9 // 10]), ("val", tokens[n_tokens * 9 // 10 :])):
        part.tofile(os.path.join(data_dir, f"{split}.bin"))


def train_script(data_dir, out_dir, max_iters, init_from="scratch", device="cpu", dtype="float32"):
    """train.py's body: get_batch, estimate_loss, the cosine schedule, the accumulation loop, checkpoints."""
    batch_size, block_size, gradient_accumulation_steps = 8, 16, 2
    eval_iters, eval_interval = 2, max_iters
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 2e-2, 2e-3, 2, max_iters
    weight_decay, beta1, beta2, grad_clip = 1e-1, 0.9, 0.95, 1.0
    compile = False

    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device_type = "cuda" if "cuda" in device else "cpu"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = nullcontext() if device_type == "cpu" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)

    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i : i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + block_size]).astype(np.int64)) for i in ix])
        if device_type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        return x, y

    iter_num = 0
    best_val_loss = 1e9
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size, bias=False, vocab_size=None, dropout=0.0)
    if init_from == "scratch":
        model_args["vocab_size"] = 64
        model = GPT(GPTConfig(**model_args))
    elif init_from == "resume":
        checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location=device)
        checkpoint_model_args = checkpoint["model_args"]
        for k in ["n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size"]:
            model_args[k] = checkpoint_model_args[k]
        model = GPT(GPTConfig(**model_args))
        state_dict = checkpoint["model"]
        unwanted_prefix = "_orig_mod."
        for k, _v in list(state_dict.items()):
            if k.startswith(unwanted_prefix):
                state_dict[k[len(unwanted_prefix) :]] = state_dict.pop(k)
        model.load_state_dict(state_dict)
        iter_num = checkpoint["iter_num"]
        best_val_loss = checkpoint["best_val_loss"]
    model.to(device)

    scaler = torch.cuda.amp.GradScaler(enabled=(dtype == "float16"))
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    if init_from == "resume":
        optimizer.load_state_dict(checkpoint["optimizer"])
    checkpoint = None
    if compile:
        model = torch.compile(model)
    raw_model = model

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                with ctx:
                    logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out

    def get_lr(it):
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        assert 0 <= decay_ratio <= 1
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return min_lr + coeff * (learning_rate - min_lr)

    history = []
    X, Y = get_batch("train")
    local_iter_num = 0
    while True:
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % eval_interval == 0 and local_iter_num > 0:
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                checkpoint = {
                    "model": raw_model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "model_args": model_args,
                    "iter_num": iter_num,
                    "best_val_loss": best_val_loss,
                    "config": {"learning_rate": learning_rate, "device": device},
                }
                torch.save(checkpoint, os.path.join(out_dir, "ckpt.pt"))
        for _micro_step in range(gradient_accumulation_steps):
            with ctx:
                logits, loss = model(X, Y)
                loss = loss / gradient_accumulation_steps
            X, Y = get_batch("train")
            scaler.scale(loss).backward()
        if grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lossf = loss.item() * gradient_accumulation_steps
        history.append(lossf)
        iter_num += 1
        local_iter_num += 1
        if iter_num > max_iters:
            break
    return raw_model, history, best_val_loss


# ---------------------------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------------------------


def _ln64(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + 1e-5) * w
    return y + b if b is not None else y


def _block64(block, x, n_head):
    """One Block in float64 NumPy, from the module's parameters."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in block.state_dict().items()}
    B, T, C = x.shape
    h = _ln64(x, p["ln_1.weight"], p.get("ln_1.bias"))
    qkv = h @ p["attn.c_attn.weight"].T + p["attn.c_attn.bias"]
    q, k, v = (a.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(C // n_head)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    x = x + y @ p["attn.c_proj.weight"].T + p["attn.c_proj.bias"]
    h = _ln64(x, p["ln_2.weight"], p.get("ln_2.bias"))
    h = h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return x + h @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]


@pytest.mark.parametrize("flash", [True, False])
def test_block_matches_float64_numpy(flash):
    torch.manual_seed(0)
    config = GPTConfig(flash=flash)
    block = Block(config)
    for p in block.parameters():
        torch.nn.init.normal_(p, mean=0.0, std=0.3)
    x = torch.randn(2, 7, config.n_embd)
    y = block(x)
    assert y.shape == (2, 7, config.n_embd)
    ref = _block64(block, x.numpy().astype(np.float64), config.n_head)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=2e-4, atol=2e-4)
    assert ("bias" in dict(block.attn.named_buffers())) is (not flash)


def test_flash_and_manual_paths_agree_and_weights_are_tied():
    torch.manual_seed(0)
    flash = GPT(GPTConfig(flash=True))
    manual = GPT(GPTConfig(flash=False))
    missing, unexpected = manual.load_state_dict(flash.state_dict(), strict=False)
    assert missing == [f"transformer.h.{i}.attn.bias" for i in range(2)] and unexpected == []
    idx, targets = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    a, loss_a = flash(idx, targets)
    b, loss_b = manual(idx, targets)
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert abs(loss_a.item() - loss_b.item()) < 1e-5
    assert abs(loss_a.item() - math.log(64)) < 0.1  # near-uniform predictions at init (the tied
    # weights favour the input token, so the targets are other tokens)
    assert flash.transformer.wte.weight is flash.lm_head.weight
    n = flash.get_num_params()
    assert n == sum(p.numel() for p in flash.parameters()) - 16 * 32
    assert len(list(flash.parameters())) == len(dict(flash.named_parameters()))  # the tied weight counted once
    loss_a.backward()
    assert flash.lm_head.weight.grad is not None and flash.transformer.wpe.weight.grad.shape == (16, 32)
    std = flash.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(4)) < 0.004  # the scaled init of residual projections
    logits, none = flash(idx[:, :5])
    assert logits.shape == (3, 1, 64) and none is None


def test_configure_optimizers_groups():
    model = GPT(GPTConfig())
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    decay, nodecay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and nodecay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in nodecay["params"])
    assert len(decay["params"]) + len(nodecay["params"]) == len(list(model.parameters()))
    assert "fused" in inspect.signature(torch.optim.AdamW).parameters
    assert model.estimate_mfu(4, 0.5) > 0


def test_autocast_bfloat16_forward_on_cpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    idx = torch.randint(0, 64, (2, 16))
    ctx = torch.amp.autocast(device_type="cpu", dtype=torch.bfloat16)
    with ctx:
        logits, loss = model(idx, idx)
    ref, ref_loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 0.05
    loss.backward()
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_generate_top_k_and_crop_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(flash=False))
    model.eval()
    start_ids = [1, 2, 3]
    x = torch.tensor(start_ids, dtype=torch.long, device="cpu")[None, ...]
    with torch.no_grad():
        with nullcontext():
            y = model.generate(x, 20, temperature=0.8, top_k=5)
    assert y.shape == (1, 23) and y.dtype == torch.long and y[0].tolist()[:3] == start_ids
    assert all(0 <= t < 64 for t in y[0].tolist())
    model.crop_block_size(8)
    assert model.transformer.wpe.weight.shape == (8, 32) and model.transformer.h[0].attn.bias.shape == (1, 1, 8, 8)
    y = model.generate(torch.zeros((2, 1), dtype=torch.long), 12, top_k=1)  # greedy; context cropped to 8
    assert y.shape == (2, 13) and (y[0] == y[1]).all()


@pytest.mark.filterwarnings("ignore:.*GradScaler:FutureWarning")  # nanoGPT's spelling warns in PyTorch too
@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", "float32"),
        pytest.param("cuda", "float16", marks=requires_gpu),
        pytest.param("cuda", "bfloat16", marks=requires_gpu),
    ],
)
def test_train_loop_checkpoint_and_resume(tmp_path, device, dtype):
    write_dataset(tmp_path, 64, 4000)
    model, history, best_val_loss = train_script(tmp_path, tmp_path, max_iters=20, device=device, dtype=dtype)
    assert abs(history[0] - math.log(64)) < 0.2
    assert np.mean(history[-4:]) < 0.6 * history[0], history
    assert float(best_val_loss) < 0.6 * history[0]
    checkpoint = torch.load(os.path.join(tmp_path, "ckpt.pt"), map_location="cpu")
    assert checkpoint["iter_num"] == 20 and checkpoint["model_args"]["vocab_size"] == 64
    assert checkpoint["config"]["device"] == device and checkpoint["model"]["lm_head.weight"].device == "cpu"
    assert set(checkpoint["model"]) == set(model.state_dict())
    assert model.lm_head.weight.device == device
    resumed, history2, _ = train_script(
        tmp_path, tmp_path, max_iters=24, init_from="resume", device=device, dtype=dtype
    )
    assert len(history2) == 5 and np.mean(history2) < 0.6 * history[0]
