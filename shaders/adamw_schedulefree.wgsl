// AdamWScheduleFree (schedulefree): the update formula, in the kernel template
// (shaders/common.wgsl), and the switch between train mode (the parameter holds y) and eval
// mode (it holds x). State: z, exp_avg_sq; scalar state: lr_max, weight_sum, weight_sum_lo.

// One parameter group's values for one step, or for a mode switch. Must be kept in sync with
// `ScheduleFreeHyper` in src/optim/adamw_schedulefree.rs.
struct Hyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta2), for the bias correction 1 - beta2^t
    ln_beta2: f32,
    eps: f32,
    weight_decay: f32,
    r: f32,
    weight_lr_power: f32,
    warmup_steps: u32,
    // 1 for a mode switch (finalize then runs with HOLD): p.lerp_(z, mode_weight) where z
    // exists, nothing else
    mode_switch: u32,
    mode_weight: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // the learning rate after warm-up
    lr: f32,
    // the interpolation toward z (schedulefree's ckp1)
    ckp1: f32,
    // lr * (beta1 * (1 - ckp1) - 1)
    coef_y: f32,
    // 1 - beta2^t
    bias_correction2: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    // 1 on the tensor's first step, when z becomes a copy of the parameter
    first_step: u32,
    mode_switch: u32,
    mode_weight: f32,
    // 1 once the tensor has stepped, when z exists
    has_z: u32,
}

// Python's x ** y for the average's weights (x >= 0): exact where y is 0, 1 or 2.
fn weight_pow(x: f32, y: f32) -> f32 {
    if y == 0.0 {
        return 1.0;
    }
    if y == 1.0 {
        return x;
    }
    if y == 2.0 {
        return x * x;
    }
    if x == 0.0 {
        return 0.0;
    }
    return pow(x, y);
}

// x is (lr_max, weight_sum, weight_sum_lo): weight_sum + weight_sum_lo is the sum of the
// weights, kept with Knuth's two-sum so that it follows schedulefree's float64 sum.
fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    var c: Coeffs;
    c.mode_switch = h.mode_switch;
    c.mode_weight = h.mode_weight;
    c.has_z = u32(t > 0u);
    if h.mode_switch != 0u || t == 0u {
        return c;
    }
    let steps = f32(t);
    var lr = h.lr;
    if t - 1u < h.warmup_steps {
        lr = h.lr * (steps / f32(h.warmup_steps));
    }
    let lr_max = max(lr, (*x).x);
    let weight = weight_pow(steps, h.r) * weight_pow(lr_max, h.weight_lr_power);
    let sum = (*x).y + weight;
    let b = sum - (*x).y;
    let lo = (*x).z + (((*x).y - (sum - b)) + (weight - b));
    let total = sum + lo;
    var ckp1 = 0.0;
    if total != 0.0 {
        ckp1 = weight / total;
    }
    *x = Scalars(lr_max, sum, lo, 0.0);
    c.lr = lr;
    c.ckp1 = ckp1;
    c.coef_y = lr * (h.beta1 * (1.0 - ckp1) - 1.0);
    c.bias_correction2 = one_minus_exp(steps * h.ln_beta2);
    c.beta2 = h.beta2;
    c.one_minus_beta2 = h.one_minus_beta2;
    c.eps = h.eps;
    c.weight_decay = h.weight_decay;
    c.first_step = u32(t == 1u);
    return c;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    if c.mode_switch != 0u {
        if c.has_z != 0u {
            (*u).p = torch_lerp((*u).p, (*u).s[0], c.mode_weight);
        }
        return;
    }
    if c.first_step != 0u {
        (*u).s[0] = (*u).p;
    }
    (*u).s[1] = (*u).s[1] * c.beta2 + c.one_minus_beta2 * (*u).g * (*u).g;
    var normalized = (*u).g / (sqrt((*u).s[1] / c.bias_correction2) + c.eps);
    if c.weight_decay != 0.0 {
        normalized = normalized + c.weight_decay * (*u).p;
    }
    (*u).p = torch_lerp((*u).p, (*u).s[0], c.ckp1);
    (*u).p = (*u).p + c.coef_y * normalized;
    (*u).s[0] = (*u).s[0] - c.lr * normalized;
}
