"""conch.optim: optimizers (SGD, Adam(W), RMSprop, Adagrad, Adadelta, RAdam, NAdam, Adamax) and LR schedulers.

Example::

    opt = conch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = conch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
"""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adam_variants import Adamax, NAdam, RAdam
from .optimizer import Optimizer, is_bitwise_torch, required, set_bitwise_torch
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "RAdam",
    "NAdam",
    "Adamax",
    "lr_scheduler",
    "required",
    "set_bitwise_torch",
    "is_bitwise_torch",
]
