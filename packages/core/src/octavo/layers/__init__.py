"""Model building blocks shared by every model family.

Layers allocate their parameters with ``torch.empty`` on the target device and dtype (no
initialization: checkpoints fill them), take a :class:`~octavo.modeling.ParallelConfig`, and
create linear weights through a :class:`~octavo.layers.quantization.QuantizationMethod`.
"""

from octavo.layers.activation import Activation, GatedActivation, SiluAndMul, silu_and_mul
from octavo.layers.alibi import alibi_slopes
from octavo.layers.attention import Attention
from octavo.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from octavo.layers.layernorm import LayerNorm
from octavo.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    default_weight_loader,
)
from octavo.layers.norm import RMSNorm, rms_norm
from octavo.layers.quantization import QuantizationMethod, UnquantizedMethod, set_weight_attrs
from octavo.layers.rotary import (
    RopeConfig,
    RotaryEmbedding,
    apply_rotary,
    get_rope,
    rope_config_from_hf,
)
from octavo.layers.weight_loading import UnknownWeightError, process_weights_after_loading

__all__ = [
    "Activation", "Attention", "LayerNorm",
    "ColumnParallelLinear", "GatedActivation", "LinearBase",
    "MergedColumnParallelLinear", "ParallelLMHead", "QKVParallelLinear", "QuantizationMethod",
    "RMSNorm", "ReplicatedLinear", "RopeConfig", "RotaryEmbedding", "RowParallelLinear",
    "SiluAndMul", "UnknownWeightError", "UnquantizedMethod",
    "VocabParallelEmbedding", "alibi_slopes", "apply_rotary", "default_weight_loader", "get_rope",
    "process_weights_after_loading", "rms_norm", "rope_config_from_hf",
    "set_weight_attrs", "silu_and_mul",
]
