// Conversions between f32 and the 16-bit storage types, by bit operations alone, so that every
// adapter has them (WGSL has no bf16, and f16 needs the `shader-f16` feature) and every adapter
// rounds alike: `pack2x16float` leaves its rounding and its overflow to the implementation.
// A 16-bit value is the low half of a u32. Widening is exact; rounding is to nearest, ties to
// even, with f16 overflow to infinity, and NaN stored as PyTorch stores it (f16 0x7e00 with the
// sign, bf16 0x7fc0). `DType` in src/dtype.rs is the same on the CPU.

// bf16 bits widened to f32.
fn bf16_to_f32(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

// f32 rounded to bf16 bits, as PyTorch's c10::BFloat16.
fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7fffffffu) > 0x7f800000u {
        return 0x7fc0u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// f16 bits widened to f32.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        // Zero or subnormal: m · 2^-24, exact in f32 and a normal number there.
        return bitcast<f32>(sign | bitcast<u32>(f32(m) * 0x1p-24f));
    }
    if e == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// f32 rounded to f16 bits.
fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if a > 0x7f800000u {
        return sign | 0x7e00u;
    }
    // 65520, halfway between 65504 and 65536, and above: infinity.
    if a >= 0x477ff000u {
        return sign | 0x7c00u;
    }
    // 2^-14 and above: normal. The exponent rebiased from 127 to 15; a carry out of the
    // mantissa moves into the exponent, as it should.
    if a >= 0x38800000u {
        let r = a - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
    }
    // 2^-25 (a tie with 0, which is even) and below: zero.
    if a <= 0x33000000u {
        return sign;
    }
    // Subnormal: the significand in units of 2^-24, rounded. The exponent field is 102 to 112
    // here, so the shift is 14 to 24.
    let e = a >> 23u;
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    var q = m >> shift;
    let rest = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if rest > half || (rest == half && (q & 1u) == 1u) {
        q += 1u;
    }
    return sign | q;
}

// ---- Stochastic rounding (`Precision::stochastic_rounding`) ----

// lowbias32 (Chris Wellons' integer hash).
fn mix32(x: u32) -> u32 {
    var v = x;
    v ^= v >> 16u;
    v *= 0x7feb352du;
    v ^= v >> 15u;
    v *= 0x846ca68bu;
    return v ^ (v >> 16u);
}

// The first three rounds of `rounding_bits` (src/dtype.rs), shared by a tensor's elements:
// `mix32(prefix ^ element)` is the element's random bits.
fn rounding_prefix(seed: u32, step: u32, tensor: u32) -> u32 {
    return mix32(mix32(mix32(seed ^ 0x9e3779b9u) ^ step) ^ tensor);
}

// Of the two 16-bit values around `x` (`n` the nearest, widened `y`; `other` the other,
// widened `z`), the one away from zero where `(r >> 8) / 2^24` is below x's distance from the
// one nearer zero, in units of their spacing: unbiased over uniform `r`. A value of the type,
// NaN, and values beyond the largest finite one keep `n`. `DType::round_stochastic` in
// src/dtype.rs is the same.
fn pick_stochastic(x: f32, n: u32, y: f32, other: u32, z: f32, r: u32) -> u32 {
    let inf = 0x7f800000u;
    if y == x || (bitcast<u32>(y) & inf) == inf || (bitcast<u32>(z) & inf) == inf {
        return n;
    }
    let far = abs(z) > abs(y);
    let near_value = min(abs(y), abs(z));
    // Exact: |x| lies within a factor 2 of the nearer value, or that is 0.
    let frac = (abs(x) - near_value) / (max(abs(y), abs(z)) - near_value);
    let away = f32(r >> 8u) * 0x1p-24f < frac;
    return select(select(other, n, far), select(n, other, far), away);
}

// The other 16-bit value around `x`, given `n`, its nearest, widened `y`: one step of the bits
// away from zero where `y` lies nearer zero than `x`, else toward it.
fn other_neighbour(x: f32, n: u32, y: f32) -> u32 {
    return select(n + 1u, n - 1u, abs(y) > abs(x));
}

// f32 rounded stochastically to bf16 bits with the random bits `r`.
fn f32_to_bf16_stochastic(x: f32, r: u32) -> u32 {
    let n = f32_to_bf16(x);
    let y = bf16_to_f32(n);
    let other = other_neighbour(x, n, y);
    return pick_stochastic(x, n, y, other, bf16_to_f32(other), r);
}

// f32 rounded stochastically to f16 bits with the random bits `r`.
fn f32_to_f16_stochastic(x: f32, r: u32) -> u32 {
    let n = f32_to_f16(x);
    let y = f16_to_f32(n);
    let other = other_neighbour(x, n, y);
    return pick_stochastic(x, n, y, other, f16_to_f32(other), r);
}
