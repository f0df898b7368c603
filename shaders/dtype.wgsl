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
