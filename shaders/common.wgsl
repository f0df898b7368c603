// Shared prologue of every optimizer kernel (prepended, after one access prologue,
// shaders/scalar.wgsl or shaders/vec4.wgsl, to each optimizer's shader by `src/gpu/kernels.rs`).
//
// One dispatch updates a *batch*: up to MAX_SEGMENTS contiguous pieces ("segments") of tensors
// whose parameters live in one buffer and whose gradients live in one buffer. Each invocation
// handles one *unit* of LANES consecutive elements (one element, or one aligned vec4), and each
// workgroup handles WORKGROUP_SIZE consecutive units of exactly one segment, so per-tensor
// hyperparameters are uniform across a workgroup. The host lays segments out back to back in
// workgroup space; a workgroup finds its segment by binary search over `first_workgroup`.
//
// A segment need not start or end on a unit boundary: its first element is lane `head` of its
// first unit, in the parameter, gradient and state windows alike (the host only batches tensors
// for vec4 access whose parameter and gradient offsets agree modulo 4 elements, and pads state
// offsets to match). Invocations whose unit is only partly the segment's write just their lanes,
// so neighbouring segments may share a unit.
//
// Must be kept in sync with `SegmentTable`/`Segment` in src/optimizer.rs (`segment_table`).

const WORKGROUP_SIZE: u32 = 256u;
const MAX_SEGMENTS: u32 = 256u;

struct Segment {
    // Unit offsets inside the bound windows of the parameter, gradient and state buffers: the
    // unit holding the segment's first element.
    param_offset: u32,
    grad_offset: u32,
    state_offset: u32,
    // Number of elements in this segment.
    len: u32,
    // Index of this segment's first workgroup in the batch's linearised workgroup space.
    first_workgroup: u32,
    // Index into the per-tensor hyperparameter array of this batch.
    slot: u32,
    // Lane of the segment's first element within its first unit (0 when LANES is 1).
    head: u32,
    _pad: u32,
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

// Where one invocation works: its segment, the unit index inside that segment (to add to the
// segment's unit offsets), and the lanes [lo, hi) of that unit that belong to the segment.
// lo == hi when the invocation has nothing to do.
struct Site {
    segment: Segment,
    index: u32,
    lo: u32,
    hi: u32,
}

fn locate(workgroup_id: vec3<u32>, local_index: u32) -> Site {
    var site: Site;
    site.lo = 0u;
    site.hi = 0u;
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
    // Lane positions counted from lane 0 of the segment's first unit.
    let first = site.index * LANES;
    let end = site.segment.head + site.segment.len;
    if first < end {
        site.lo = select(0u, site.segment.head, site.index == 0u);
        site.hi = min(LANES, end - first);
    }
    return site;
}

// True when every lane of the invocation's unit belongs to its segment, so whole units may be
// stored; otherwise only lanes [lo, hi) may be written.
fn whole(site: Site) -> bool {
    return site.lo == 0u && site.hi == LANES;
}

// torch.lerp as PyTorch evaluates it for float tensors, lane by lane.
fn torch_lerp(start: V, end: V, weight: f32) -> V {
    if abs(weight) < 0.5 {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}
