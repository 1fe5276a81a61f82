"""fp16cont: continue training float32 Keras models in 16-bit.

Example:
    >>> import fp16cont
    >>> q = fp16cont.quantize_weights(model, precision="auto")  # doctest: +SKIP
    >>> model16 = fp16cont.build_fp16_model(model, q)  # doctest: +SKIP
    >>> result = fp16cont.continue_training(model16, x, y, epochs=5)  # doctest: +SKIP
"""

import fp16cont._quiet  # noqa: F401  (first: a quiet TensorFlow start for the command line)
from fp16cont.errors import (
    AlreadyLowPrecisionError,
    DataError,
    Fp16ContError,
    InvalidArgumentError,
    InvalidSourceError,
    LossScaleFloorError,
    MissingDependencyError,
    MissingLossError,
    ModelNotBuiltError,
    NonFiniteOutputError,
    NonFiniteWeightsError,
    OutputMismatchError,
    PerformanceWarning,
    RebuildError,
    SourceFileNotFoundError,
    TrainingDivergedError,
    UnsupportedBackendError,
    WeightMismatchError,
    WeightOverflowError,
)
from fp16cont._keras_compat import UnsupportedKerasError
from fp16cont.hardware import detect_device, select_precision
from fp16cont.convert.policies import DEFAULT_ISLANDS
from fp16cont.convert.quantize import quantize_weights
from fp16cont.convert.rebuild import build_fp16_model, inspect
from fp16cont.reporting.results import (
    BatchNormRecalibration,
    BuildReport,
    ComparisonReport,
    Device,
    DeviceFitResult,
    EpochRecord,
    GuardEvent,
    LayerStagnation,
    PrecisionChoice,
    QuantizationReport,
    QuantizedWeights,
    RunRecord,
    StagnationReport,
    TrainingResult,
    VariableAudit,
    Verification,
)
from fp16cont.training.train import continue_training
from fp16cont.training.batchnorm import recalibrate_batchnorm
from fp16cont.optim.carry import carry_optimizer_state
from fp16cont.training.checkpoint import load_checkpoint, save_checkpoint
from fp16cont.reporting.compare import compare
from fp16cont.optim.compensation import CompensatedOptimizer
from fp16cont.training.device_loop import device_fit, upload
from fp16cont.convert.export import export_float32
from fp16cont.training.guard import NonFiniteGuard
from fp16cont.optim.loss_scale import DynamicLossScale
from fp16cont.reporting.stagnation import StagnationMonitor, stagnation_audit
from fp16cont.bench.datasets import load_dataset
from fp16cont.bench.models import mlp, resnet, resnet20, resnet32, resnet56

__version__ = "0.1.0"

__all__ = [
    "quantize_weights",
    "build_fp16_model",
    "inspect",
    "continue_training",
    "recalibrate_batchnorm",
    "BatchNormRecalibration",
    "select_precision",
    "detect_device",
    "Device",
    "PrecisionChoice",
    "DEFAULT_ISLANDS",
    "QuantizedWeights",
    "QuantizationReport",
    "VariableAudit",
    "BuildReport",
    "Verification",
    "TrainingResult",
    "GuardEvent",
    "LayerStagnation",
    "Fp16ContError",
    "InvalidArgumentError",
    "InvalidSourceError",
    "SourceFileNotFoundError",
    "UnsupportedBackendError",
    "UnsupportedKerasError",
    "OutputMismatchError",
    "WeightMismatchError",
    "WeightOverflowError",
    "NonFiniteWeightsError",
    "NonFiniteOutputError",
    "AlreadyLowPrecisionError",
    "ModelNotBuiltError",
    "RebuildError",
    "MissingLossError",
    "DataError",
    "PerformanceWarning",
    "compare",
    "ComparisonReport",
    "RunRecord",
    "EpochRecord",
    "load_dataset",
    "resnet",
    "resnet20",
    "resnet32",
    "resnet56",
    "mlp",
    "MissingDependencyError",
    "CompensatedOptimizer",
    "device_fit",
    "upload",
    "DeviceFitResult",
    "DynamicLossScale",
    "NonFiniteGuard",
    "StagnationMonitor",
    "StagnationReport",
    "stagnation_audit",
    "carry_optimizer_state",
    "export_float32",
    "save_checkpoint",
    "load_checkpoint",
    "LossScaleFloorError",
    "TrainingDivergedError",
    "__version__",
]
