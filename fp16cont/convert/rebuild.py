"""Rebuild a float32 model in 16-bit and load its (quantized) weights.

Example:
    >>> import keras, fp16cont
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> m16 = fp16cont.build_fp16_model(m, precision="bfloat16")
    >>> m16.layers[0].kernel.dtype, m16.layers[1].kernel.dtype
    ('bfloat16', 'float32')
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal, overload

import keras
import numpy as np

from fp16cont.convert.architecture import (
    check_built,
    clone_with_policies,
    compile_config,
    effective_policy,
    iter_layers,
    output_layers,
    policies_lost_on_reload,
)
from fp16cont.errors import (
    InvalidArgumentError,
    InvalidSourceError,
    RebuildError,
    UnsupportedBackendError,
    WeightMismatchError,
    check_bool,
)
from fp16cont.hardware import collective_strategy_active, select_precision
from fp16cont.numerics import is_low_float, numpy_dtype
from fp16cont.convert.policies import DEFAULT_ISLANDS, Island, Mode, PolicyPlan, is_normalization, policy_plan
from fp16cont.convert.quantize import QuantizedWeights, quantize_weights
from fp16cont.reporting.results import BuildReport, QuantizationReport, Verification
from fp16cont.convert.sources import check_float32_source, load_model, variable_arrays
from fp16cont.convert.verify import compare_models

__all__ = ["build_fp16_model", "inspect", "weight_bytes", "float_precision", "dtype_mix", "check_dtypes"]

_MODES = ("pure", "mixed")


@overload
def build_fp16_model(
    model: keras.Model | str | os.PathLike[str],
    weights: QuantizedWeights | None = None,
    *,
    precision: str = "auto",
    mode: Mode = "pure",
    keep_float32: Sequence[Island] | None = DEFAULT_ISLANDS,
    verify: bool = True,
    return_report: Literal[False] = False,
) -> keras.Model: ...


@overload
def build_fp16_model(
    model: keras.Model | str | os.PathLike[str],
    weights: QuantizedWeights | None = None,
    *,
    precision: str = "auto",
    mode: Mode = "pure",
    keep_float32: Sequence[Island] | None = DEFAULT_ISLANDS,
    verify: bool = True,
    return_report: Literal[True],
) -> tuple[keras.Model, BuildReport]: ...


def build_fp16_model(
    model: keras.Model | str | os.PathLike[str],
    weights: QuantizedWeights | None = None,
    *,
    precision: str = "auto",
    mode: Mode = "pure",
    keep_float32: Sequence[Island] | None = DEFAULT_ISLANDS,
    verify: bool = True,
    return_report: bool = False,
) -> keras.Model | tuple[keras.Model, BuildReport]:
    """Rebuild a float32 model with 16-bit variables and compute.

    The architecture is rebuilt from its config with a dtype policy per layer
    (``keras.config`` globals are never touched) and the weights are loaded:
    16-bit variables get ``weights`` (computed with :func:`quantize_weights`
    when ``None``), float32 islands get the source's exact float32 values.
    A compiled source passes its loss, metrics and optimizer settings on.
    The source model is never modified.

    Args:
        model: The float32 source: a built ``keras.Model`` or a ``.keras`` /
            ``.h5`` path.
        weights: The result of :func:`quantize_weights` for this model.
        precision: ``"auto"``, ``"float16"`` or ``"bfloat16"``; with ``weights``,
            ``"auto"`` means the weights' precision.
        mode: ``"pure"`` — variables and compute in 16-bit; ``"mixed"`` — float32
            variables and 16-bit compute (Keras mixed precision), for comparison.
        keep_float32: Float32 islands: ``"normalization"`` (float32 statistics),
            ``"output"`` (output layers in float32, so the loss is float32),
            layer classes and layer-name glob patterns. ``None`` for none.
        verify: Run one probe batch through both models and record the largest
            output difference and the argmax agreement in the report.
        return_report: Also return the :class:`~fp16cont.reporting.results.BuildReport`
            (the dtype mix, islands and why, the cast audit and the probe check).
            :func:`inspect` recomputes what the model itself shows at any time.

    Returns:
        The new model, or ``(model16, report)`` with ``return_report=True``.
        Nothing is attached to the model.

    Raises:
        InvalidArgumentError: For a bad ``precision``, ``mode`` or ``keep_float32``.
        InvalidSourceError: If ``model`` is not a model or model file.
        SourceFileNotFoundError: If ``model`` is a path with no file.
        UnsupportedBackendError: For bfloat16 under TensorFlow's
            ``MultiWorkerMirroredStrategy`` (no bfloat16 collectives).
        ModelNotBuiltError: If the model has no weights yet.
        AlreadyLowPrecisionError: If the model already has 16-bit variables.
        RebuildError: If the architecture cannot be rebuilt from its config.
        WeightMismatchError: If ``weights`` do not fit the model.
        NonFiniteOutputError: If ``verify`` finds NaN/Inf in the 16-bit outputs.

    Example:
        >>> q = fp16cont.quantize_weights(m, "bfloat16")  # doctest: +SKIP
        >>> m16, report = fp16cont.build_fp16_model(m, q, return_report=True)  # doctest: +SKIP
        >>> report.precision, fp16cont.inspect(m16).precision  # doctest: +SKIP
        ('bfloat16', 'bfloat16')
    """
    source = _as_model(model)
    if not isinstance(precision, str):
        raise InvalidArgumentError(
            f"Argument `precision` should be 'auto', 'float16' or 'bfloat16'. Received: {precision!r}. "
            "Fix: leave it 'auto'."
        )
    check_bool("verify", verify, "leave it True")
    check_bool("return_report", return_report, "pass True to get (model16, report)")
    if not isinstance(mode, str) or mode not in _MODES:
        raise InvalidArgumentError(
            f"Argument `mode` should be 'pure' or 'mixed'. Received: mode={mode!r}. "
            "Fix: mode='pure' keeps variables in 16-bit (half the memory); mode='mixed' is "
            "Keras mixed precision."
        )
    _check_float32(source)
    if weights is not None:
        _check_weights(source, weights, precision)
        precision = weights.precision
    choice = select_precision(precision)
    if choice.precision == "bfloat16" and collective_strategy_active():
        raise UnsupportedBackendError(
            "TensorFlow's MultiWorkerMirroredStrategy cannot create bfloat16 variables (its "
            "collective broadcast has no bfloat16 kernel). Fix: use precision='float16' for "
            "multi-worker training (the fast format on NVIDIA GPUs), or MirroredStrategy on one host."
        )
    if weights is None and mode == "pure":
        weights = quantize_weights(source, choice.precision)
    float32_paths = _kept_float32_paths(source, weights)
    plan = policy_plan(source, choice.precision, mode, keep_float32, float32_paths)
    rebuilt = clone_with_policies(source, plan)
    islands = check_dtypes(rebuilt, source, plan)
    _load_weights(rebuilt, source, weights if mode == "pure" else None)
    _compile_like(rebuilt, source)
    report = _report(
        rebuilt,
        choice.precision,
        mode,
        islands,
        quantization=weights.report if mode == "pure" and weights is not None else None,
        verification=compare_models(source, rebuilt) if verify else None,
    )
    _warn_if_mostly_float32(report, source)
    _warn_if_reload_loses_policies(rebuilt, choice.precision)
    return (rebuilt, report) if return_report else rebuilt


def inspect(model: keras.Model) -> BuildReport:
    """What a model trains in, read from the model itself.

    Recomputes the facts of :func:`build_fp16_model`'s report from the
    model's variables and layer policies, so it works on any built model:
    one just built, trained, saved and loaded again, or built by hand.
    What only the build knew is left out (``quantization`` and
    ``verification`` are ``None``), and an island's reason is read from the
    layer: a normalization layer, an output layer, or another float32 layer.

    Args:
        model: A built Keras model.

    Returns:
        A :class:`~fp16cont.reporting.results.BuildReport`. ``precision`` is
        the 16-bit format most trainable values train in (``"float32"`` if
        none); ``mode`` is ``"pure"`` (16-bit variables), ``"mixed"``
        (float32 variables, 16-bit compute) or ``"float32"``.

    Raises:
        InvalidSourceError: If ``model`` is not a ``keras.Model``.
        ModelNotBuiltError: If the model was never built.

    Example:
        >>> import fp16cont
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(64, name="hidden"), keras.layers.Dense(2, name="head")])
        >>> m16 = fp16cont.build_fp16_model(m, precision="bfloat16")
        >>> report = fp16cont.inspect(m16)
        >>> report.precision, report.mode, [p for p, _, _ in report.islands]
        ('bfloat16', 'pure', ['head'])
    """
    if not isinstance(model, keras.Model):
        raise InvalidSourceError(
            f"Argument `model` should be a built keras.Model. Received: {type(model).__name__}. "
            "Fix: pass the model build_fp16_model returned."
        )
    check_built(model)
    main = float_precision(model)
    precision = main.removeprefix("mixed_")
    mode = "mixed" if main.startswith("mixed_") else "pure" if is_low_float(precision) else "float32"
    outputs = output_layers(model)
    islands = tuple(
        (layer.path or layer.name, effective_policy(layer).name, _seen_reason(layer, outputs))
        for layer in iter_layers(model)
        if not isinstance(layer, keras.layers.InputLayer) and effective_policy(layer).name != main
    )
    return _report(model, precision, mode, islands)


def _seen_reason(layer: keras.layers.Layer, outputs: list[keras.layers.Layer]) -> str:
    if any(layer is o for o in outputs):
        return "output layer"
    if is_normalization(layer):
        return "normalization (float32 statistics)"
    return f"runs in {effective_policy(layer).name}"


def _report(
    model: keras.Model,
    precision: str,
    mode: str,
    islands: tuple[tuple[str, str, str], ...],
    quantization: QuantizationReport | None = None,
    verification: Verification | None = None,
) -> BuildReport:
    """The :class:`BuildReport` of a built model; what is measured is read from its variables."""
    return BuildReport(
        precision=precision,
        mode=mode,
        layer_policies=_layer_policies(model),
        float32_variables=tuple(v.path for v in model.weights if "float" in str(v.dtype) and not is_low_float(v.dtype)),
        weight_bytes=weight_bytes(model.weights),
        quantization=quantization,
        verification=verification,
        dtype_mix=dtype_mix(model.weights),
        islands=islands,
    )


def dtype_mix(variables: Sequence[Any]) -> tuple[tuple[str, int, int, int], ...]:
    """Variables, values and bytes per dtype, measured on real variables.

    Args:
        variables: Keras variables (``model.weights``).

    Returns:
        ``(dtype, variables, values, bytes)`` rows, largest byte count first.

    Example:
        >>> dtype_mix([keras.Variable(np.zeros(3, "float32"))])
        (('float32', 1, 3, 12),)
    """
    rows: dict[str, list[int]] = {}
    for v in variables:
        row = rows.setdefault(str(v.dtype), [0, 0, 0])
        size = int(np.prod(v.shape))
        row[0] += 1
        row[1] += size
        row[2] += size * numpy_dtype(v.dtype).itemsize
    return tuple(sorted(((k, *r) for k, r in rows.items()), key=lambda r: -r[3]))  # type: ignore[misc]


def check_dtypes(
    rebuilt: keras.Model, source: keras.Model, plan: PolicyPlan
) -> tuple[tuple[str, str, str], ...]:
    """Check every variable of the built model against the plan.

    Each floating-point variable must have the variable dtype of its layer's
    planned policy. A float32 variable where the plan says 16-bit is an error
    (the model would silently train in float32); a planned island that came
    out 16-bit is a warning.

    Args:
        rebuilt: The built 16-bit model.
        source: The float32 source model.
        plan: The :class:`~fp16cont.convert.policies.PolicyPlan` used to build it.

    Returns:
        ``(layer path, policy, reason)`` for every island layer of the built model.

    Raises:
        RebuildError: Naming the layers whose variables stayed float32 and the fix.
    """
    pairs = _pair_layers(rebuilt, source)
    owner: dict[int, keras.layers.Layer] = {}
    for layer in iter_layers(rebuilt):  # parents first: the deepest owner wins
        for v in layer.weights:
            owner[id(v)] = layer
    unplanned: dict[str, str] = {}
    missed: dict[str, str] = {}
    for v in rebuilt.weights:
        if "float" not in str(v.dtype):
            continue
        layer = owner.get(id(v))
        old = pairs.get(id(layer)) if layer is not None else None
        planned = plan(old) if old is not None else plan.main
        expected = keras.DTypePolicy(planned).variable_dtype
        where = (layer.path or layer.name) if layer is not None else v.path
        if str(v.dtype) == expected:
            continue
        if is_low_float(expected):
            unplanned.setdefault(where, f"{type(layer).__name__}: {v.path} is {v.dtype}")
        else:
            missed.setdefault(where, f"{v.path} is {v.dtype}, planned {expected}")
    if unplanned:
        listed = "; ".join(f"{k} ({d})" for k, d in list(unplanned.items())[:5])
        raise RebuildError(
            f"{len(unplanned)} layer(s) of {source.name!r} kept float32 variables where the plan "
            f"says {plan.main}: {listed}. The layer creates them with a fixed dtype (or "
            "outside its dtype policy). Fix: accept them as float32 islands with "
            f"keep_float32=(..., {next(iter(unplanned))!r}) (a layer class or a name/path "
            "pattern), or create the variables with dtype=self.variable_dtype in the layer."
        )
    if missed:
        warnings.warn(
            f"{len(missed)} planned float32 island layer(s) of {source.name!r} came out 16-bit "
            f"(their constructor fixes the dtype): {'; '.join(list(missed)[:5])}. The report "
            "lists the dtypes as built.",
            stacklevel=3,
        )
    islands = []
    for layer in iter_layers(rebuilt):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        policy = effective_policy(layer).name
        if policy == plan.main:
            continue
        old = pairs.get(id(layer))
        reason = (plan.reason(old) if old is not None else None) or "set by the model's own code"
        islands.append((layer.path or layer.name, policy, reason))
    return tuple(islands)


def _pair_layers(rebuilt: keras.Model, source: keras.Model) -> dict[int, keras.layers.Layer]:
    new, old = list(iter_layers(rebuilt)), list(iter_layers(source))
    if len(new) == len(old) and all(type(a) is type(b) for a, b in zip(new, old)):
        return {id(a): b for a, b in zip(new, old)}
    by_path: dict[str, keras.layers.Layer] = {}
    for layer in old:
        by_path.setdefault(layer.path or layer.name, layer)
    return {id(a): by_path[a.path or a.name] for a in new if (a.path or a.name) in by_path}


def _warn_if_mostly_float32(report: BuildReport, source: keras.Model) -> None:
    share = report.sixteen_bit_share
    if report.mode == "pure" and share is not None and share < 0.5:
        warnings.warn(
            f"Only {share:.0%} of the floating-point values of {source.name!r} are "
            f"{report.precision}; the rest stay float32 in islands "
            f"({', '.join(f'{p}: {why}' for p, _, why in report.islands[:5])}). Fix: name fewer "
            "islands with keep_float32=(...), e.g. keep_float32=('normalization',) to let the "
            "output layer train in 16-bit; for weights kept float32 because they overflow "
            "float16, use precision='bfloat16'.",
            stacklevel=3,
        )


def _warn_if_reload_loses_policies(rebuilt: keras.Model, precision: str) -> None:
    lost = policies_lost_on_reload(rebuilt)
    if lost:
        shown = ", ".join(repr(p) for p in lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        warnings.warn(
            f"{rebuilt.name!r} is a subclassed model whose constructor does not pass the layer dtypes on: saved and "
            f"loaded again with keras.models.load_model, {len(lost)} of its layers ({shown}) come back in float32, "
            f"not {precision}. Fix: after loading, call fp16cont.build_fp16_model(loaded_model, precision={precision!r}) "
            "again, or save and resume with continue_training(..., checkpoint_dir=...), which loads into this model.",
            UserWarning,
            stacklevel=3,
        )


def weight_bytes(variables: Sequence[Any]) -> int:
    """Total bytes of a list of Keras variables.

    Args:
        variables: Keras variables (``model.weights``, ``optimizer.variables``).

    Returns:
        The sum of ``size * itemsize``.

    Example:
        >>> v = keras.Variable(np.zeros((2, 3), "float32"))
        >>> weight_bytes([v])
        24
    """
    return sum(int(np.prod(v.shape)) * numpy_dtype(v.dtype).itemsize for v in variables)


def float_precision(model: keras.Model) -> str:
    """The 16-bit format a model's trainable parameters train in, ``"float32"`` if none.

    Any 16-bit trainable variable makes a model "pure" 16-bit, however many
    parameters its float32 islands hold: those variables need the 16-bit
    training machinery (compensated updates, loss scaling for float16). A
    classifier whose float32 output layer is most of its parameters is still
    a float16 model.

    Args:
        model: A built model.

    Returns:
        ``"float16"`` or ``"bfloat16"`` when trainable variables are stored in
        16-bit (the format of most of them if both occur);
        ``"mixed_float16"`` / ``"mixed_bfloat16"`` when none are, but float32
        variables are used in 16-bit compute; otherwise ``"float32"``.

    Example:
        >>> float_precision(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        'float32'
    """
    counts: dict[str, int] = {}
    owners = {id(v): layer for layer in iter_layers(model) for v in layer.trainable_weights}
    for v in model.trainable_weights:
        layer = owners.get(id(v))
        compute = str(effective_policy(layer).compute_dtype) if layer is not None else str(v.dtype)
        name = str(v.dtype) if is_low_float(v.dtype) or not is_low_float(compute) else f"mixed_{compute}"
        counts[name] = counts.get(name, 0) + int(np.prod(v.shape))
    for kind in (("float16", "bfloat16"), ("mixed_float16", "mixed_bfloat16")):
        found = {k: counts[k] for k in kind if counts.get(k)}
        if found:
            return max(found, key=lambda k: found[k])
    return "float32"


def _kept_float32_paths(source: keras.Model, weights: QuantizedWeights | None) -> tuple[str, ...]:
    # by position: a report made from a file or a clone names the same
    # variables with other path prefixes
    if weights is None:
        return ()
    return tuple(v.path for v, audit in zip(source.weights, weights.report.variables) if audit.kept_float32)


def _layer_policies(model: keras.Model) -> tuple[tuple[str, str], ...]:
    return tuple(
        (layer.path or layer.name, effective_policy(layer).name)
        for layer in iter_layers(model)
        if not isinstance(layer, keras.layers.InputLayer)
    )


def _as_model(model: Any) -> keras.Model:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not isinstance(model, keras.Model):
        raise InvalidSourceError(
            f"Argument `model` should be a keras.Model or a path to a .keras/.h5 file. "
            f"Received: model of type {type(model).__name__}. Fix: pass the float32 model."
        )
    check_built(model)
    return model


def _check_float32(model: keras.Model) -> None:
    check_float32_source(
        [v.path for v in model.weights], [v.dtype for v in model.weights], f"Model {model.name!r}",
        "pass the float32 model to build_fp16_model, or train this model directly with continue_training().",
    )


def _check_weights(model: keras.Model, weights: Any, precision: str) -> None:
    if not isinstance(weights, QuantizedWeights):
        raise WeightMismatchError(
            f"Argument `weights` should be the result of quantize_weights(). Received: "
            f"{type(weights).__name__}. Fix: build_fp16_model(model, quantize_weights(model))."
        )
    if precision not in ("auto", weights.precision):
        raise InvalidArgumentError(
            f"Argument `precision` ({precision!r}) differs from the weights' precision "
            f"({weights.precision!r}). Fix: leave precision='auto' when passing weights."
        )
    expected = [tuple(v.shape) for v in model.weights]
    received = [tuple(a.shape) for a in weights.arrays]
    if expected != received:
        first = next((i for i, (e, r) in enumerate(zip(expected, received)) if e != r), min(len(expected), len(received)))
        raise WeightMismatchError(
            f"The weights do not fit model {model.name!r}: it has {len(expected)} variables, the "
            f"weights {len(received)}; first difference at index {first}. Fix: quantize the "
            "weights of this very model: quantize_weights(model)."
        )


def _load_weights(rebuilt: keras.Model, source: keras.Model, weights: QuantizedWeights | None) -> None:
    exact = variable_arrays(source)
    cast = weights.arrays if weights is not None else (None,) * len(exact)
    for variable, original, quantized in zip(rebuilt.weights, exact, cast):
        use_cast = quantized is not None and numpy_dtype(variable.dtype) == quantized.dtype
        variable.assign(quantized if use_cast else original.astype(numpy_dtype(variable.dtype)))


def _compile_like(rebuilt: keras.Model, source: keras.Model) -> None:
    config = compile_config(source)
    if not config:
        return
    try:
        # compile() rather than compile_from_config(): the latter also builds the
        # optimizer, whose slots would then be fixed before continue_training can
        # choose their dtype
        rebuilt.compile(**keras.saving.deserialize_keras_object(config))
    except Exception as err:  # custom, unregistered losses or metrics
        warnings.warn(
            f"The 16-bit model was not compiled like {source.name!r} ({err}); pass loss= and "
            "metrics= to continue_training().",
            stacklevel=3,
        )
