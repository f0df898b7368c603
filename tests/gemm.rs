//! The matrix product (`wgpu_optim::gemm`) on the GPU against an f64 reference.

mod common;

use common::{POISON, Rng, bits, ctx};
use wgpu_optim::Error;
use wgpu_optim::gemm::{Gemm, Matrix};

/// Held by each test: on GL, wgpu runs a submission's dispatches holding the context's lock,
/// and llvmpipe's GL takes long enough over a product's barriers that a test thread waiting
/// for the lock at the same time gives up ("Could not lock adapter context").
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A matrix's element (i, j) in a host copy of its buffer.
fn element(data: &[f32], m: &Matrix<'_>, i: u32, j: u32) -> f64 {
    let at = m.offset + u64::from(i) * m.row_stride + u64::from(j) * m.col_stride;
    f64::from(data[at as usize])
}

/// Runs `c = alpha·a·b (+ beta·d)` and checks every element of C against the f64 product
/// within float32's error bound for a dot product of k terms, `(k + 2)·u·Σ|terms|` twice over,
/// and that nothing else in C's buffer changed.
fn check(c: Matrix<'_>, alpha: f32, a: Matrix<'_>, b: Matrix<'_>, d: Option<(f32, Matrix<'_>)>) {
    let ctx = ctx();
    let before = bits(ctx, c.buffer);
    let product = Gemm::new(ctx, c, alpha, a, b, d).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    product.record(&mut encoder.begin_compute_pass(&Default::default()));
    ctx.queue().submit([encoder.finish()]);
    let read = |m: &Matrix<'_>| ctx.read_f32(&[(m.buffer, 0, m.buffer.size() / 4)]).unwrap();
    let (ha, hb, hc) = (read(&a), read(&b), read(&c));
    let hd = d.map(|(_, d)| read(&d));
    let k = a.cols;
    let unit = f64::from(f32::EPSILON) / 2.0;
    let mut written = vec![false; hc.len()];
    for i in 0..c.rows {
        for j in 0..c.cols {
            let (mut want, mut size) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = element(&ha, &a, i, p) * element(&hb, &b, p, j);
                want += t;
                size += t.abs();
            }
            want *= f64::from(alpha);
            size *= f64::from(alpha).abs();
            if let (Some((beta, dm)), Some(hd)) = (d, &hd) {
                let t = f64::from(beta) * element(hd, &dm, i, j);
                want += t;
                size += t.abs();
            }
            let got = element(&hc, &c, i, j);
            let bound = 2.0 * f64::from(k + 2) * unit * size;
            assert!(
                (got - want).abs() <= bound,
                "C[{i}, {j}] of {} x {} x {k}: {got} but {want} (bound {bound:e})",
                c.rows,
                c.cols
            );
            let at = c.offset + u64::from(i) * c.row_stride + u64::from(j) * c.col_stride;
            written[at as usize] = true;
        }
    }
    for (e, (&now, &was)) in hc.iter().zip(&before).enumerate() {
        assert!(
            written[e] || now.to_bits() == was,
            "element {e} of C's buffer, outside C, changed"
        );
    }
}

/// A buffer of `len` normal values, and one of `len` poisoned ones.
fn buffers(rng: &mut Rng, len: usize) -> (wgpu::Buffer, wgpu::Buffer) {
    let ctx = ctx();
    (
        ctx.create_f32_buffer("input", &rng.normals(len)).unwrap(),
        ctx.create_f32_buffer("output", &vec![POISON; len]).unwrap(),
    )
}

#[test]
fn products_match_the_reference_at_awkward_sizes() {
    let _serial = serial();
    // Sizes below, at and across the 64 x 64 tile and the 16-wide slices of k, operands
    // transposed or not, with and without D, at offsets.
    let mut rng = Rng::fresh("gemm sizes");
    for (m, n, k) in [
        (1, 1, 1),
        (3, 5, 7),
        (64, 64, 16),
        (65, 63, 17),
        (130, 70, 200),
        (7, 300, 129),
        (4, 4, 4097),
    ] {
        let (m, n, k) = (m as u32, n as u32, k as u32);
        let len = (2 * (m * k + k * n + m * n) + 64) as usize;
        let (input, output) = buffers(&mut rng, len);
        for (ta, tb, with_d) in [
            (false, false, false),
            (true, false, true),
            (false, true, true),
            (true, true, false),
        ] {
            // A at element 3 (stored k x m when transposed), B after it, D after B; C at 5.
            let a = if ta {
                Matrix::row_major(&input, 3, k, m).t()
            } else {
                Matrix::row_major(&input, 3, m, k)
            };
            let b_at = 3 + u64::from(m * k) + 1;
            let b = if tb {
                Matrix::row_major(&input, b_at, n, k).t()
            } else {
                Matrix::row_major(&input, b_at, k, n)
            };
            let d_at = b_at + u64::from(k * n);
            let d = with_d.then(|| (-0.75, Matrix::row_major(&input, d_at, m, n)));
            let c = Matrix::row_major(&output, 5, m, n);
            check(c, 1.25, a, b, d);
        }
    }
}

#[test]
fn newton_schulz_iteration_of_a_wide_matrix() {
    let _serial = serial();
    // One of Muon's iterations on a 96 x 200 matrix X: A = X·Xᵀ, B = b·A + c·A·A,
    // X' = a·X + B·X, each product checked on its own inputs.
    let ctx = ctx();
    let mut rng = Rng::fresh("gemm newton-schulz");
    let (rows, cols) = (96u32, 200u32);
    let x: Vec<f32> = rng
        .normals((rows * cols) as usize)
        .iter()
        .map(|v| v / 140.0)
        .collect();
    let x = ctx.create_f32_buffer("x", &x).unwrap();
    let gram = ctx
        .create_f32_buffer("gram", &vec![POISON; (rows * rows) as usize])
        .unwrap();
    let update = ctx
        .create_f32_buffer("update", &vec![POISON; (rows * rows) as usize])
        .unwrap();
    let next = ctx
        .create_f32_buffer("next", &vec![POISON; (rows * cols) as usize])
        .unwrap();
    let xm = Matrix::row_major(&x, 0, rows, cols);
    let gm = Matrix::row_major(&gram, 0, rows, rows);
    let um = Matrix::row_major(&update, 0, rows, rows);
    check(gm, 1.0, xm, xm.t(), None);
    check(um, 2.0315, gm, gm, Some((-4.775, gm)));
    check(
        Matrix::row_major(&next, 0, rows, cols),
        1.0,
        um,
        xm,
        Some((3.4445, xm)),
    );
}

#[test]
fn long_inner_dimensions_are_summed_whole() {
    // Products over more than 4,096 (the inner dimension split between workgroups, their
    // partial sums added by a second dispatch) and more than 65,535 (llvmpipe cuts any loop of
    // an invocation after 65,535 iterations, nested loops counted together): operands of
    // small integers, whose products' sums are exact in float32, so that a dropped slice
    // cannot hide in the rounding bound. A column of B is 1, 2 or 3 in turn down k; A is all
    // ones but for a row of twos, transposed in one case.
    let _serial = serial();
    let ctx = ctx();
    for (m, n, k) in [(3u32, 5u32, 4097u32), (4, 4, 70_001), (2, 65, 300_007)] {
        let (m64, n64, k64) = (u64::from(m), u64::from(n), u64::from(k));
        let mut a = vec![1.0f32; (m64 * k64) as usize];
        a[..k as usize].fill(2.0);
        let b: Vec<f32> = (0..k64 * n64)
            .map(|e| ((e / n64 + e % n64) % 3 + 1) as f32)
            .collect();
        let a_buf = ctx.create_f32_buffer("a", &a).unwrap();
        let b_buf = ctx.create_f32_buffer("b", &b).unwrap();
        let c_buf = ctx
            .create_f32_buffer("c", &vec![POISON; (m * n) as usize])
            .unwrap();
        let am = Matrix::row_major(&a_buf, 0, m, k);
        let bm = Matrix::row_major(&b_buf, 0, k, n);
        let product =
            Gemm::new(ctx, Matrix::row_major(&c_buf, 0, m, n), 1.0, am, bm, None).unwrap();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        product.record(&mut encoder.begin_compute_pass(&Default::default()));
        ctx.queue().submit([encoder.finish()]);
        let got = ctx.read_f32(&[(&c_buf, 0, m64 * n64)]).unwrap();
        for i in 0..m64 {
            for j in 0..n64 {
                let column: u64 = (0..k64).map(|p| (p + j) % 3 + 1).sum();
                let want = if i == 0 { 2 * column } else { column };
                assert_eq!(
                    got[(i * n64 + j) as usize],
                    want as f32,
                    "C[{i}, {j}] of {m} x {n} x {k}"
                );
            }
        }
    }
}

#[test]
fn products_within_one_buffer() {
    let _serial = serial();
    // Muon's iteration with X, X·Xᵀ, its update and the next X all in one buffer (the
    // read-write variant of the kernel), X transposed as Muon views a tall matrix, and C
    // right after its inputs' last elements.
    let ctx = ctx();
    let mut rng = Rng::fresh("gemm one buffer");
    let (rows, cols) = (70u32, 33u32);
    let (n, m) = (u64::from(rows * cols), u64::from(cols * cols));
    let mut data: Vec<f32> = rng.normals(n as usize).iter().map(|v| v / 50.0).collect();
    data.extend(vec![POISON; (n + 2 * m + 1) as usize]);
    let buffer = ctx.create_f32_buffer("one buffer", &data).unwrap();
    // The tensor is rows x cols; X is its transpose, cols x rows.
    let xm = Matrix::row_major(&buffer, 0, rows, cols).t();
    let gm = Matrix::row_major(&buffer, n, cols, cols);
    let um = Matrix::row_major(&buffer, n + m, cols, cols);
    check(gm, 1.0, xm, xm.t(), None);
    check(um, 2.0315, gm, gm, Some((-4.775, gm)));
    let next = Matrix::row_major(&buffer, n + 2 * m + 1, rows, cols).t();
    check(next, 1.0, um, xm, Some((3.4445, xm)));
}

#[test]
fn bad_products_are_errors_that_write_nothing() {
    let _serial = serial();
    let ctx = ctx();
    let mut rng = Rng::fresh("gemm errors");
    let (input, output) = buffers(&mut rng, 64);
    let before = bits(ctx, &output);
    let a = Matrix::row_major(&input, 0, 2, 3);
    let c = Matrix::row_major(&output, 0, 2, 2);
    let cases: Vec<(&str, wgpu_optim::Result<Gemm>)> = vec![
        ("do not multiply", Gemm::new(ctx, c, 1.0, a, a, None)),
        (
            "overlaps A, B or D",
            Gemm::new(ctx, Matrix::row_major(&input, 5, 2, 2), 1.0, a, a.t(), None),
        ),
        (
            "past the buffer",
            Gemm::new(
                ctx,
                c,
                1.0,
                Matrix::row_major(&input, 60, 2, 3),
                a.t(),
                None,
            ),
        ),
        (
            "matrix D is 3 x 2",
            Gemm::new(ctx, c, 1.0, a, a.t(), Some((1.0, a.t()))),
        ),
        (
            "repeats elements",
            Gemm::new(ctx, Matrix { row_stride: 0, ..c }, 1.0, a, a.t(), None),
        ),
    ];
    for (what, result) in cases {
        let err = result.expect_err(what);
        assert!(matches!(err, Error::Input(_)), "{what}: {err:?}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    assert!(bits(ctx, &output) == before);
}

#[test]
fn a_zero_beta_leaves_d_unread() {
    // As BLAS: with beta 0, NaN in D does not reach C.
    let _serial = serial();
    let ctx = ctx();
    let mut rng = Rng::fresh("gemm zero beta");
    let (input, output) = buffers(&mut rng, 64);
    let nan = ctx.create_f32_buffer("d", &[f32::NAN; 4]).unwrap();
    let a = Matrix::row_major(&input, 0, 2, 3);
    let c = Matrix::row_major(&output, 0, 2, 2);
    check(c, 1.0, a, a.t(), None);
    let want = common::read_all(ctx, &output);
    ctx.queue()
        .write_buffer(&output, 0, bytemuck::cast_slice(&[POISON; 4]));
    let product = Gemm::new(
        ctx,
        c,
        1.0,
        a,
        a.t(),
        Some((0.0, Matrix::row_major(&nan, 0, 2, 2))),
    )
    .unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    product.record(&mut encoder.begin_compute_pass(&Default::default()));
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(common::read_all(ctx, &output), want);
}
