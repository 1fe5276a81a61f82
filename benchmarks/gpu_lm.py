"""Continued training of a GPT-2-sized KerasHub causal LM on one GPU: fp16cont against Keras mixed precision.

One process, JAX backend; nothing here imports TensorFlow. Two parts:

1. **Throughput and bytes** on a GPT-2-small-sized ``GPT2CausalLM`` (vocabulary
   50,257, 12 layers, 12 heads, hidden 768, about 124M parameters; sequence
   ``--seq``), AdamW(1e-4), synthetic token ids (throughput does not depend on
   their values), ``padding_mask`` of ones. Variants, timed in alternation, one
   untimed epoch first (compilation), then ``--repeats`` epochs each, medians:

     ct_bf16          float32 model -> ``build_fp16_model(precision="bfloat16")`` ->
                      ``continue_training`` with every default (resident engine,
                      stochastic rounding, NaN guard)
     keras_mixed_spe  Keras ``mixed_bfloat16`` model, ``keras.Model.fit`` on the arrays (KerasHub's
                      ``Task.fit`` would first convert them to a tf.data/Grain dataset),
                      ``steps_per_execution=--spe``
     keras_mixed_fit  the same, ``steps_per_execution=1`` (Keras' default)
     keras_mixed_sgd  keras_mixed_fit with plain SGD instead of AdamW: the cheapest update there
                      is, so keras_mixed_fit's step time minus this one bounds what any
                      optimizer-state format (16-bit included) can save per step
     ct_bf16_emb32    ct_bf16 with the tied token embedding (and so the logits) kept
                      float32: ``keep_float32=("normalization", "output", "token_embedding")``

   Weight + optimizer bytes are counted from the variables after training.
   Peak device memory of one variant per process: ``--memory VARIANT``.

2. **Largest model that fits** (``--search``, on by default on a GPU): GPT-2
   blocks of hidden ``--search-hidden`` (default 8192, 64 heads), a bounded
   ladder of depths (8, 10, 14, 20 blocks: 6.9B to 16.5B parameters), a few training steps each (batch 1 x ``--seq``); an
   out-of-memory error ends a variant's ladder. Keras mixed climbs first; the
   fp16cont ladder starts at Keras' first failure. Both models are built with
   random weights straight in their final dtypes (fp16cont's from the
   configuration ``build_fp16_model`` produces, its ``DTypePolicyMap``); the
   float32 source a real continuation starts from is not held, for either.
   The fp16cont runs pass ``nan_guard=False`` (the guard keeps host copies of
   the state, which would dominate host memory at these sizes).

Run (GPU, about 5 minutes):
    KERAS_BACKEND=jax python benchmarks/gpu_lm.py
Smoke (CPU, about a minute):
    KERAS_BACKEND=jax python benchmarks/gpu_lm.py --tiny

Results: ``$OUT/gpu_lm.json`` when ``OUT`` is set, else ``benchmarks/results/gpu_lm.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # peak bytes measure what is used
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fp16cont  # noqa: E402
from _timing import SyncedTimer, block  # noqa: E402  (benchmarks/_timing.py)

VARIANTS = ("ct_bf16", "keras_mixed_spe", "keras_mixed_fit", "ct_bf16_emb32")
TARGETS = (("ct_bf16", "keras_mixed_fit", 1.2), ("ct_bf16", "keras_mixed_spe", 1.2))


def backbone_config(args: argparse.Namespace, layers: int | None = None, hidden: int | None = None,
                    heads: int | None = None) -> dict[str, Any]:
    """Constructor arguments of a ``GPT2Backbone`` (dropout 0.1, KerasHub's default)."""
    hidden = hidden or args.hidden
    return {"vocabulary_size": args.vocab, "num_layers": layers or args.layers, "num_heads": heads or args.heads,
            "hidden_dim": hidden, "intermediate_dim": 4 * hidden, "max_sequence_length": args.seq}


def make_lm(config: dict[str, Any], dtype: Any = None) -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(**config, dtype=dtype)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def compile_lm(model: keras.Model, spe: int = 1, optimizer: Any = None) -> keras.Model:
    model.compile(optimizer=optimizer or keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=spe)
    return model


def tokens(args: argparse.Namespace, rows: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, args.vocab, (rows, args.seq + 1), dtype=np.int32)
    return {"token_ids": ids[:, :-1], "padding_mask": np.ones((rows, args.seq), np.int32)}, ids[:, 1:]


def keras_fit(model: keras.Model, *args: Any, **kwargs: Any) -> Any:
    """Keras' own ``fit`` on arrays. KerasHub's ``Task.fit`` first converts arrays to a
    ``tf.data``/Grain dataset even without a preprocessor; with neither installed it
    cannot run, and the conversion is no part of the training step being compared."""
    return keras.Model.fit(model, *args, **kwargs)



def nbytes(variables: Any) -> int:
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize for v in variables))


def state_bytes(model: keras.Model) -> dict[str, int]:
    """Bytes of the model's variables and its optimizer's (slots, compensation, counters)."""
    weights = nbytes(model.weights)
    optimizer = nbytes(model.optimizer.variables) if model.optimizer is not None and model.optimizer.built else 0
    return {"weight_bytes": weights, "optimizer_bytes": optimizer, "total_bytes": weights + optimizer}


def dtypes(model: keras.Model) -> dict[str, int]:
    """Parameters per variable dtype."""
    out: dict[str, int] = {}
    for v in model.weights:
        out[str(v.dtype)] = out.get(str(v.dtype), 0) + int(np.prod(v.shape))
    return out


def peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")



def variants(args: argparse.Namespace, x: Any, y: Any) -> dict[str, tuple[Callable[[], keras.Model], Callable[[keras.Model], float]]]:
    cache: dict[str, Any] = {}

    def source() -> keras.Model:
        if "m" not in cache:
            keras.utils.set_random_seed(0)
            cache["m"] = compile_lm(make_lm(backbone_config(args)))
        return cache["m"]

    def keras_mixed(spe: int, optimizer: Callable[[], Any] | None = None) -> Callable[[], keras.Model]:
        def setup() -> keras.Model:
            keras.utils.set_random_seed(0)
            m = make_lm(backbone_config(args), dtype="mixed_bfloat16")
            m.set_weights(source().get_weights())
            return compile_lm(m, spe, optimizer() if optimizer else None)
        return setup

    def fit_epoch(m: keras.Model) -> float:
        timer = SyncedTimer()
        keras_fit(m, x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer], shuffle=True)
        return timer.seconds[-1]

    def ct_setup(**kwargs: Any) -> Callable[[], keras.Model]:
        def setup() -> keras.Model:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m16 = fp16cont.build_fp16_model(source(), precision="bfloat16", **kwargs)
            cache.setdefault("report", fp16cont.inspect(m16).summary())  # what the built model trains in
            return m16
        return setup

    def ct_epoch(m: keras.Model) -> float:
        timer = SyncedTimer()
        result = fp16cont.continue_training(m, x, y, epochs=1, batch_size=args.batch_size, verbose=0, callbacks=[timer])
        cache.setdefault("engine", result.engine)  # the first continue_training variant's (ct_bf16)
        cache.setdefault("result", result.summary())
        return timer.seconds[-1]

    emb32 = {"keep_float32": ("normalization", "output", "token_embedding")}
    return {"ct_bf16": (ct_setup(), ct_epoch), "ct_bf16_emb32": (ct_setup(**emb32), ct_epoch), "keras_mixed_spe": (keras_mixed(args.spe), fit_epoch),
            "keras_mixed_fit": (keras_mixed(1), fit_epoch),
            "keras_mixed_sgd": (keras_mixed(1, lambda: keras.optimizers.SGD(1e-4)), fit_epoch), "_cache": cache}  # type: ignore[dict-item]


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    names = [v for v in args.variants.split(",") if v]
    x, y = tokens(args, args.steps * args.batch_size)
    table = variants(args, x, y)
    cache = table.pop("_cache")  # type: ignore[arg-type]
    models, first, seconds = {}, {}, {n: [] for n in names}
    for name in names:
        setup, epoch = table[name]
        start = time.perf_counter()
        models[name] = setup()
        built = time.perf_counter()
        epoch(models[name])
        first[name] = time.perf_counter() - built
        print(f"{name}: ready in {built - start:.1f}s, first epoch (compile included) {first[name]:.1f}s", flush=True)
    for repeat in range(args.repeats):
        for name in names:
            seconds[name].append(table[name][1](models[name]))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names), flush=True)
    per_epoch = args.steps * args.batch_size * args.seq
    rows = {}
    for name in names:
        rates = [per_epoch / s for s in seconds[name]]
        rows[name] = {"median_tokens_s": statistics.median(rates), "min_tokens_s": min(rates), "max_tokens_s": max(rates),
                      "first_epoch_s": round(first[name], 2), "parameters": int(models[name].count_params()),
                      "dtypes": dtypes(models[name]), **state_bytes(models[name])}
    ratios = []
    for num, den, target in TARGETS:
        if num in rows and den in rows:
            ratios.append({"ratio": f"{num} / {den}", "tokens_s": rows[num]["median_tokens_s"] / rows[den]["median_tokens_s"],
                           "bytes": rows[num]["total_bytes"] / rows[den]["total_bytes"], "target_speed": target,
                           "target_bytes": 0.55})
    return {"rows": rows, "ratios": ratios, "engine": cache.get("engine"), "build_report": cache.get("report"),
            "ct_summary": cache.get("result"), "tokens_per_epoch": per_epoch}


def memory_only(args: argparse.Namespace) -> dict[str, Any]:
    """One variant, one epoch: the device's peak bytes (run in a fresh process)."""
    x, y = tokens(args, args.steps * args.batch_size)
    table = variants(args, x, y)
    table.pop("_cache")
    setup, epoch = table[args.memory]
    model = setup()
    gc.collect()
    seconds = epoch(model)
    return {"variant": args.memory, "peak_bytes": peak_bytes(), "epoch_s": seconds, **state_bytes(model)}


def _is_oom(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(k in text for k in ("resource_exhausted", "resource exhausted", "out of memory", "oom", "failed to allocate"))


def try_size(args: argparse.Namespace, variant: str, layers: int, template: dict[str, Any]) -> dict[str, Any]:
    """Build one size and train a few steps; ``fits`` is False on an out-of-memory error."""
    import keras_hub

    config = backbone_config(args, layers=layers, hidden=args.search_hidden, heads=args.search_hidden // 128 or 1)
    x, y = tokens(args, args.search_steps)
    start = time.perf_counter()
    model = None
    try:
        if variant == "keras_mixed":
            model = compile_lm(make_lm(config, dtype="mixed_bfloat16"))
            keras_fit(model, x, y, batch_size=1, epochs=1, verbose=0)
        else:
            full = json.loads(json.dumps(template))
            full["backbone"]["config"].update(config)
            model = keras_hub.models.GPT2CausalLM.from_config(full)
            compile_lm(model)
            fp16cont.continue_training(model, x, y, epochs=1, batch_size=1, verbose=0, nan_guard=False)
        block(model)
        row = {"fits": True, **state_bytes(model)}
    except Exception as err:  # noqa: BLE001 - an out-of-memory error is a result; others are recorded
        row = {"fits": False, "oom": _is_oom(err), "error": f"{type(err).__name__}: {str(err)[:300]}"}
    params = _params(config)
    del model
    gc.collect()
    keras.backend.clear_session()
    return {"variant": variant, "layers": layers, "hidden": config["hidden_dim"], "parameters": params,
            "seconds": round(time.perf_counter() - start, 1), **row}


def _params(config: dict[str, Any]) -> int:
    d, layers = config["hidden_dim"], config["num_layers"]
    per_layer = 4 * d * d + 4 * d + 2 * 4 * d * d + 4 * d + d + 4 * d  # attention, MLP, 2 norms
    return int(layers * per_layer + (config["vocabulary_size"] + config["max_sequence_length"]) * d + 2 * d)


def search(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Climb the depth ladder for Keras mixed, then for fp16cont from Keras' first failure."""
    ladder = [int(n) for n in args.search_layers.split(",") if n]
    template_source = make_lm(backbone_config(args, layers=1, hidden=128, heads=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = fp16cont.build_fp16_model(template_source, precision="bfloat16", verify=False).get_config()
    del template_source
    # The policy map is keyed by layer path: give every depth of the ladder the same islands.
    template = _policy_map_for(template, max(ladder))
    deadline = time.perf_counter() + args.search_budget_s
    rows: list[dict[str, Any]] = []
    first_fail = len(ladder)
    for variant in ("keras_mixed", "fp16cont"):
        start_at = 0 if variant == "keras_mixed" else min(first_fail, len(ladder) - 1)
        for i in range(start_at, len(ladder)):
            if time.perf_counter() > deadline:
                rows.append({"variant": variant, "layers": ladder[i], "skipped": "search time budget spent"})
                break
            row = try_size(args, variant, ladder[i], template)
            rows.append(row)
            print(f"search {variant} layers={row['layers']} hidden={row['hidden']} params={row['parameters'] / 1e9:.2f}B: "
                  f"{'fits' if row['fits'] else 'OUT OF MEMORY' if row['oom'] else row['error']} ({row['seconds']}s)",
                  flush=True)
            if not row["fits"]:
                if variant == "keras_mixed":
                    first_fail = i
                break
    return rows


def _policy_map_for(config: dict[str, Any], layers: int) -> dict[str, Any]:
    """The template's policy map, with the per-layer norm entries repeated for ``layers`` blocks."""
    policy = config["backbone"]["config"]["dtype"]
    entries = policy["config"]["policy_map"]
    per_block = {k: v for k, v in entries.items() if "transformer_layer_0/" in k}
    for i in range(layers):
        for key, value in per_block.items():
            entries[key.replace("transformer_layer_0/", f"transformer_layer_{i}/")] = value
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spe", type=int, default=32, help="steps_per_execution of keras_mixed_spe")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--memory", default=None, help="one variant: its peak device bytes after one epoch, nothing else")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=None,
                        help="largest-model search (default: on unless --tiny)")
    parser.add_argument("--search-hidden", type=int, default=8192)
    parser.add_argument("--search-layers", default="8,10,14,20", help="depth ladder at --search-hidden")
    parser.add_argument("--search-steps", type=int, default=2)
    parser.add_argument("--search-budget-s", type=float, default=120.0, help="no new size is tried after this")
    parser.add_argument("--tiny", action="store_true", help="a tiny config for a CPU smoke test")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error("run with KERAS_BACKEND=jax")
    if args.tiny:
        args.vocab, args.layers, args.heads, args.hidden, args.seq = 512, 2, 2, 64, 64
        args.batch_size, args.steps, args.search_hidden, args.search_layers = 4, 4, 128, "1,2"
        args.search_budget_s = min(args.search_budget_s, 60.0)
    if args.search is None:
        args.search = not args.tiny
    import jax

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).resolve().parent / "results"
    out = Path(args.out) if args.out else out_dir / (f"gpu_lm_mem_{args.memory}.json" if args.memory else "gpu_lm.json")
    payload: dict[str, Any] = {"args": vars(args), "keras": keras.__version__, "jax": jax.__version__,
                               "device": str(jax.devices()[0]), "tensorflow_imported": "tensorflow" in sys.modules}
    if args.memory:
        payload.update(memory_only(args))
        print(json.dumps(payload, default=str), flush=True)
    else:
        started = time.perf_counter()
        payload["throughput"] = throughput(args)
        payload["peak_bytes_after_throughput"] = peak_bytes()
        payload["throughput_s"] = round(time.perf_counter() - started, 1)
        print(report(payload, args), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=str))  # kept if the search is cut short
        if args.search:
            payload["search"] = search(args)
        payload["tensorflow_imported"] = "tensorflow" in sys.modules
        payload["table"] = report(payload, args)
        print(payload["table"], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out}", flush=True)
    return 0


def report(payload: dict[str, Any], args: argparse.Namespace) -> str:
    t = payload["throughput"]
    rows = t["rows"]
    params = next(iter(rows.values()))["parameters"] if rows else 0
    lines = [f"GPT2CausalLM {params / 1e6:.1f}M parameters, vocab {args.vocab}, {args.layers} layers, hidden {args.hidden}, "
             f"seq {args.seq}, batch {args.batch_size}, {args.steps} steps/epoch, AdamW(1e-4), {args.repeats} alternated "
             f"repeats; {payload['device']}; ct engine: {t['engine']}", "",
             "| variant | median tokens/s | min | max | first epoch s | weight+opt bytes | dtypes (params) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_tokens_s']:,.0f} | {r['min_tokens_s']:,.0f} | {r['max_tokens_s']:,.0f} | "
                     f"{r['first_epoch_s']} | {r['total_bytes']:,} | {r['dtypes']} |")
    lines += ["", "| ratio | tokens/s | target | bytes | target |", "| --- | --- | --- | --- | --- |"]
    for r in t["ratios"]:
        lines.append(f"| {r['ratio']} | {r['tokens_s']:.2f}x | >= {r['target_speed']} | {r['bytes']:.3f}x | <= {r['target_bytes']} |")
    if "keras_mixed_fit" in rows and "keras_mixed_sgd" in rows:
        adamw, sgd = (1 / rows[n]["median_tokens_s"] for n in ("keras_mixed_fit", "keras_mixed_sgd"))
        lines.append(f"AdamW's share of the Keras mixed step beyond plain SGD's: {1 - sgd / adamw:.1%}; removing all of it "
                     f"would make the step {adamw / sgd:.3f}x as fast")
    for r in payload.get("search", []):
        if "skipped" in r:
            lines.append(f"search {r['variant']} layers={r['layers']}: skipped ({r['skipped']})")
            continue
        lines.append(f"search {r['variant']} layers={r['layers']} hidden={r['hidden']} {r['parameters'] / 1e9:.2f}B params: "
                     f"{'fits, state ' + format(r['total_bytes'] / 1e9, '.1f') + ' GB' if r['fits'] else 'out of memory' if r['oom'] else 'error: ' + r['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
