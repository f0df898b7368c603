// Stochastic rounding of a unit's parameter (`Precision::stochastic_rounding`), appended by
// src/gpu/kernels.rs where the parameters are 16-bit and the optimizer rounds them so, with
// `$round` the parameter type's `f32_to_bf16` or `f32_to_f16` and `$widen` its widening.
// `param_grid` gives each lane its value rounded with the random bits of the optimizer's seed,
// its step count, the tensor and the element (`rounding_bits` in src/dtype.rs), widened back to
// f32, so that the store's rounding to nearest keeps it as it is.

fn param_grid(v: V, tensor: u32, first: u32) -> V {
    let prefix = rounding_prefix(derived.header.seed, derived.header.rng_step, tensor);
    var out = v;
    for (var k = 0u; k < LANES; k++) {
        let r = mix32(prefix ^ (first + k));
        set_lane(&out, k, $widen($round_stochastic(lane(v, k), r)));
    }
    return out;
}
