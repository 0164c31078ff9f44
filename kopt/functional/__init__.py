"""kopt.functional: pure `init`/`update` optimizer transforms (optax-compatible)."""

from kopt.functional.adabelief import AdaBeliefState, adabelief
from kopt.functional.adadelta import AdadeltaState, adadelta
from kopt.functional.adafactor import AdafactorState, adafactor
from kopt.functional.adagrad import AdagradState, adagrad
from kopt.functional.adam import AdamState, adam
from kopt.functional.adamax import AdamaxState, adamax
from kopt.functional.adamw import adamw
from kopt.functional.adan import AdanState, adan
from kopt.functional.ademamix import AdEMAMixState, ademamix
from kopt.functional.adopt import AdoptState, adopt
from kopt.functional.base import (
    Transform,
    apply_updates,
    chain,
    current_learning_rate,
    iteration_count,
    set_learning_rate,
)
from kopt.functional.buckets import DEFAULT_BUCKET_THRESHOLD, Packed
from kopt.functional.clipping import clip_by_global_norm, clip_by_norm, clip_by_value
from kopt.functional.cross_cutting import (
    AccumulateState,
    EmaState,
    accumulate_gradients,
    ema,
    unscale_gradients,
)
from kopt.functional.elementwise import Rule, elementwise_transform
from kopt.functional.ftrl import FtrlState, ftrl
from kopt.functional.lamb import LambState, lamb
from kopt.functional.lars import LARSState, lars
from kopt.functional.learning_rate import learning_rate_source, resolve_learning_rate
from kopt.functional.lion import LionState, lion
from kopt.functional.muon import MuonState, muon, muon_branches
from kopt.functional.nadam import NadamState, nadam
from kopt.functional.nonfinite import (
    LossScaleState,
    SkipNonfiniteState,
    all_finite,
    dynamic_loss_scale,
    skip_nonfinite,
)
from kopt.functional.options import Options
from kopt.functional.partition import (
    MaskedNode,
    PartitionState,
    frozen,
    multi_transform,
    partition,
    path_labels,
    set_to_zero,
)
from kopt.functional.quantize import Quantized, quantization_map
from kopt.functional.radam import RAdamState, radam
from kopt.functional.rmsprop import RMSpropState, rmsprop
from kopt.functional.schedule_free import (
    ScheduleFreeAdamWState,
    schedule_free_adamw,
    schedule_free_eval_params,
)
from kopt.functional.sgd import SGDState, sgd
from kopt.functional.sharding import aggregate_gradients, shard_state, state_shardings
from kopt.functional.weight_decay import add_decayed_weights

__all__ = [
    "Transform",
    "chain",
    "apply_updates",
    "iteration_count",
    "current_learning_rate",
    "set_learning_rate",
    "resolve_learning_rate",
    "learning_rate_source",
    "clip_by_norm",
    "clip_by_value",
    "clip_by_global_norm",
    "add_decayed_weights",
    "unscale_gradients",
    "ema",
    "EmaState",
    "accumulate_gradients",
    "AccumulateState",
    "Rule",
    "elementwise_transform",
    "Options",
    "Packed",
    "DEFAULT_BUCKET_THRESHOLD",
    "sgd",
    "SGDState",
    "rmsprop",
    "RMSpropState",
    "adam",
    "AdamState",
    "adamw",
    "adadelta",
    "AdadeltaState",
    "adagrad",
    "AdagradState",
    "adamax",
    "AdamaxState",
    "nadam",
    "NadamState",
    "ftrl",
    "FtrlState",
    "lion",
    "LionState",
    "adafactor",
    "AdafactorState",
    "lamb",
    "LambState",
    "partition",
    "multi_transform",
    "PartitionState",
    "MaskedNode",
    "path_labels",
    "frozen",
    "set_to_zero",
    "radam",
    "RAdamState",
    "adabelief",
    "AdaBeliefState",
    "adan",
    "AdanState",
    "adopt",
    "AdoptState",
    "ademamix",
    "AdEMAMixState",
    "lars",
    "LARSState",
    "muon",
    "MuonState",
    "muon_branches",
    "schedule_free_adamw",
    "ScheduleFreeAdamWState",
    "schedule_free_eval_params",
    "state_shardings",
    "shard_state",
    "aggregate_gradients",
    "skip_nonfinite",
    "SkipNonfiniteState",
    "dynamic_loss_scale",
    "LossScaleState",
    "all_finite",
    "Quantized",
    "quantization_map",
]
