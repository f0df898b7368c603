// Shared prologue of every optimizer kernel (prepended to each optimizer's shader by
// `src/gpu/kernels.rs`).
//
// One dispatch updates a *batch*: up to MAX_SEGMENTS contiguous pieces ("segments") of tensors
// whose parameters live in one buffer and whose gradients live in one buffer. Each workgroup
// handles WORKGROUP_SIZE consecutive elements of exactly one segment, so per-tensor
// hyperparameters are uniform across a workgroup. The host lays segments out back to back
// in workgroup space; a workgroup finds its segment by binary search over `first_workgroup`.
//
// Must be kept in sync with `SegmentTable`/`Segment` in src/gpu/plan.rs.

const WORKGROUP_SIZE: u32 = 256u;
const MAX_SEGMENTS: u32 = 256u;

struct Segment {
    // Element offsets inside the bound windows of the parameter, gradient and state buffers.
    param_offset: u32,
    grad_offset: u32,
    state_offset: u32,
    // Number of elements in this segment.
    len: u32,
    // Index of this segment's first workgroup in the batch's linearised workgroup space.
    first_workgroup: u32,
    // Index into the per-tensor hyperparameter array of this batch.
    slot: u32,
    _pad0: u32,
    _pad1: u32,
}

struct SegmentTable {
    count: u32,
    total_workgroups: u32,
    // x extent of the dispatch; the grid is 2-D when a batch needs more workgroups than one
    // dimension allows.
    dispatch_x: u32,
    _pad: u32,
    segments: array<Segment, MAX_SEGMENTS>,
}

@group(0) @binding(0) var<uniform> table: SegmentTable;

// Where one invocation works: its segment and the element index inside that segment.
struct Site {
    valid: bool,
    segment: Segment,
    index: u32,
}

fn locate(workgroup_id: vec3<u32>, local_index: u32) -> Site {
    var site: Site;
    site.valid = false;
    let wg = workgroup_id.x + workgroup_id.y * table.dispatch_x;
    if wg >= table.total_workgroups {
        return site;
    }
    // Last segment whose first workgroup is <= wg.
    var lo = 0u;
    var hi = table.count - 1u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if table.segments[mid].first_workgroup <= wg {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    site.segment = table.segments[lo];
    site.index = (wg - site.segment.first_workgroup) * WORKGROUP_SIZE + local_index;
    site.valid = site.index < site.segment.len;
    return site;
}

// torch.lerp as PyTorch evaluates it for float tensors.
fn torch_lerp(start: f32, end: f32, weight: f32) -> f32 {
    if abs(weight) < 0.5 {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}
