// C = alpha * A·B + beta * D for f32 matrices in storage buffers (Muon's Newton–Schulz
// iterations), each matrix addressed by an element offset and a row and a column stride, so
// that a transposed operand is the same matrix with its strides swapped.
//
// A tiled kernel: each workgroup computes a TILE x TILE tile of C with 256 invocations of
// 4 x 4 elements each, taking the inner dimension in slices of SLICE through workgroup
// memory. Each element of C adds its products in increasing k, one at a time, then forms
// alpha * sum + beta * d, as BLAS's sgemm does (D unread where beta is 0). The grid is (tiles
// across n, tiles across m, splits of k).
//
// The inner dimension is split into `splits` ranges of `k_chunk` (a multiple of SLICE), one
// per workgroup along z, so that no invocation loops more than 65,535 times over all its
// loops (llvmpipe cuts longer loops, counting the iterations of nested loops together) and a
// product with few tiles of C still has workgroups to spread. With more than one split, `gemm`
// writes each split's sums to the partials (bound as C: element (z, i, j) at (z * m + i) * n +
// j) and `gemm_combine` adds them in increasing z, then forms alpha * sum + beta * d into C
// (bound with the partials as A).
//
// Must be kept in sync with `Params` in src/gemm.rs.

const TILE: u32 = 64u;
const SLICE: u32 = 16u;

// Where a matrix's element (i, j) is: offset + i * row_stride + j * col_stride.
struct Operand {
    offset: u32,
    row_stride: u32,
    col_stride: u32,
    _pad: u32,
}

struct Params {
    // C is m x n, A m x k, B k x n, D (when has_d) m x n.
    m: u32,
    n: u32,
    k: u32,
    has_d: u32,
    alpha: f32,
    beta: f32,
    // Elements of k each split takes (a multiple of SLICE), and the number of splits.
    k_chunk: u32,
    splits: u32,
    a: Operand,
    b: Operand,
    d: Operand,
    c: Operand,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mat_a: array<f32>;
@group(0) @binding(2) var<storage, read> mat_b: array<f32>;
@group(0) @binding(3) var<storage, read> mat_d: array<f32>;
@group(0) @binding(4) var<storage, read_write> mat_c: array<f32>;

// One slice of A (TILE rows x SLICE) and of B (SLICE x TILE), both stored slice-row major in
// vec4s of four rows of A or four columns of B: elements (kk, 4q..4q+3) at kk * 16 + q.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

fn at(o: Operand, i: u32, j: u32) -> u32 {
    return o.offset + i * o.row_stride + j * o.col_stride;
}

// Element (i, j) of C as alpha * sum + beta * d.
fn finish(p: Params, sum: f32, i: u32, j: u32) -> f32 {
    var v = p.alpha * sum;
    if p.has_d != 0u && p.beta != 0.0 {
        v += p.beta * mat_d[at(p.d, i, j)];
    }
    return v;
}

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = params;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // This invocation's 4 x 4 block of the tile.
    let tx = lid % 16u;
    let ty = lid / 16u;
    // This workgroup's range of k.
    let k_first = wid.z * p.k_chunk;
    let k_end = min(p.k, k_first + p.k_chunk);
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = k_first; k0 < k_end; k0 += SLICE) {
        // A vec4 of each slice an invocation (four rows of A, four columns of B, at one k),
        // zero outside the matrices; neighbouring invocations read neighbouring columns of a
        // row-major B.
        let kk = lid / 16u;
        let q = lid % 16u;
        var x = vec4<f32>(0.0);
        var y = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let r = row0 + 4u * q + e;
            if r < p.m && k0 + kk < k_end {
                x[e] = mat_a[at(p.a, r, k0 + kk)];
            }
            let col = col0 + 4u * q + e;
            if k0 + kk < k_end && col < p.n {
                y[e] = mat_b[at(p.b, k0 + kk, col)];
            }
        }
        tile_a[lid] = x;
        tile_b[lid] = y;
        workgroupBarrier();
        for (var kk = 0u; kk < SLICE; kk++) {
            let a4 = tile_a[kk * 16u + ty];
            let b4 = tile_b[kk * 16u + tx];
            acc[0] += a4.x * b4;
            acc[1] += a4.y * b4;
            acc[2] += a4.z * b4;
            acc[3] += a4.w * b4;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + 4u * ty + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + 4u * tx + j;
            if r < p.m && col < p.n {
                if p.splits > 1u {
                    mat_c[(wid.z * p.m + r) * p.n + col] = acc[i][j];
                } else {
                    mat_c[at(p.c, r, col)] = finish(p, acc[i][j], r, col);
                }
            }
        }
    }
}

// With more than one split, each element of C from the splits' partials (bound as A), added
// in increasing z; the grid is gemm's without z, each invocation taking a 4 x 4 block.
@compute @workgroup_size(256)
fn gemm_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = params;
    let row0 = wid.y * TILE + 4u * (lid / 16u);
    let col0 = wid.x * TILE + 4u * (lid % 16u);
    for (var e = 0u; e < 16u; e++) {
        let r = row0 + e / 4u;
        let col = col0 + e % 4u;
        if r < p.m && col < p.n {
            var sum = 0.0;
            for (var z = 0u; z < p.splits; z++) {
                sum += mat_a[(z * p.m + r) * p.n + col];
            }
            mat_c[at(p.c, r, col)] = finish(p, sum, r, col);
        }
    }
}
