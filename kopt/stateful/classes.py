"""The stateful classes, listed once: every optimizer, `Optimizer`, `Variable` and the wrappers.

This `__all__` is the one list of them: `kopt.stateful` (so `kopt.optimizers`) and the
top-level `kopt` re-export it (`kopt.optimizers.Adam is kopt.Adam`). A new optimizer's
class is exported by one import and one `__all__` entry here.
"""

from kopt.stateful.adabelief import AdaBelief
from kopt.stateful.adadelta import Adadelta
from kopt.stateful.adafactor import Adafactor
from kopt.stateful.adagrad import Adagrad
from kopt.stateful.adam import Adam
from kopt.stateful.adamax import Adamax
from kopt.stateful.adamw import AdamW
from kopt.stateful.adan import Adan
from kopt.stateful.ademamix import AdEMAMix
from kopt.stateful.adopt import ADOPT
from kopt.stateful.ftrl import Ftrl
from kopt.stateful.lamb import Lamb
from kopt.stateful.lars import LARS
from kopt.stateful.lion import Lion
from kopt.stateful.loss_scale_optimizer import LossScaleOptimizer
from kopt.stateful.multi_optimizer import MultiOptimizer, OptimizerMap
from kopt.stateful.muon import Muon
from kopt.stateful.nadam import Nadam
from kopt.stateful.optimizer import Optimizer
from kopt.stateful.radam import RAdam
from kopt.stateful.rmsprop import RMSprop
from kopt.stateful.schedule_free import ScheduleFreeAdamW
from kopt.stateful.sgd import SGD
from kopt.stateful.variable import Variable

__all__ = [
    "Variable",
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "Adadelta",
    "Adagrad",
    "Adamax",
    "Nadam",
    "Ftrl",
    "Lion",
    "Adafactor",
    "Lamb",
    "RAdam",
    "AdaBelief",
    "Adan",
    "ADOPT",
    "AdEMAMix",
    "LARS",
    "Muon",
    "ScheduleFreeAdamW",
    "MultiOptimizer",
    "OptimizerMap",
    "LossScaleOptimizer",
]
