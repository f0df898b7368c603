// How the step kernels load and store a unit's parameter where the optimizer keeps an f32
// master copy of its 16-bit parameters (`Precision::master_weights`), in place of
// shaders/param.wgsl: the update runs on the master copy (binding 4, unit `m`, from
// `master_index`: laid out as the first state buffer, but for factored state), and the 16-bit
// parameter is written from the new master value in the same kernel. The arguments are those
// of shaders/param.wgsl.
//
// A master copy not made yet holds UNMADE (`UNMADE_MASTER` in src/optimizer.rs), a NaN that
// no arithmetic makes: the kernel takes the parameter, widened, in its place. So the copies are
// made by the first step that runs after the optimizer is built (or the parameters are loaded
// without master copies), from the parameters as they are then, with no readback and whatever
// the engine wrote to them in between.
const UNMADE: u32 = 0x7fe5a5a5u;

fn load_param(p: u32, m: u32) -> V {
    var x = master_unit(m);
    var unmade = false;
    for (var k = 0u; k < LANES; k++) {
        unmade = unmade || bitcast<u32>(lane(x, k)) == UNMADE;
    }
    if unmade {
        let q = param_unit(p);
        for (var k = 0u; k < LANES; k++) {
            if bitcast<u32>(lane(x, k)) == UNMADE {
                set_lane(&x, k, lane(q, k));
            }
        }
    }
    return x;
}

fn load_param_lane(p: u32, m: u32, k: u32) -> f32 {
    let x = master_lane(m, k);
    if bitcast<u32>(x) == UNMADE {
        return param_lane(p, k);
    }
    return x;
}

fn store_param(p: u32, m: u32, v: V, tensor: u32, first: u32) {
    set_master_unit(m, v);
    set_param_unit(p, param_grid(v, tensor, first));
}

// Stores lanes [lo, hi) alone (the edge dispatch).
fn store_param_lanes(p: u32, m: u32, v: V, tensor: u32, first: u32, lo: u32, hi: u32) {
    let r = param_grid(v, tensor, first);
    for (var k = lo; k < hi; k++) {
        set_master_lane(m, k, lane(v, k));
        set_param_lane(p, k, lane(r, k));
    }
}
