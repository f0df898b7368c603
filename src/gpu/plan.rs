//! Splits an optimizer's tensors into batches, one dispatch each.
//!
//! A batch holds pieces of tensors that share a kernel, a parameter buffer and a gradient
//! buffer. Each batch binds one window of the parameter buffer and one of the gradient buffer,
//! each no larger than `max_storage_buffer_binding_size` and starting at an offset aligned to
//! `min_storage_buffer_offset_alignment`, and owns state buffers that hold its pieces back to
//! back. A tensor that does not fit one window is split into pieces in several batches. At most
//! `MAX_SEGMENTS` pieces and `MAX_SEGMENTS` distinct tensors go in one batch.
//!
//! Tensors planned for vec4 access (`lanes == 4`) also get windows whose ends are rounded up to
//! 16 bytes, and state offsets padded so that each piece starts at the same lane of a vec4 in
//! its state buffers as in its parameter and gradient windows.

use super::template::{MAX_SEGMENTS, WORKGROUP_SIZE};

/// Where one tensor lives. Offsets are in bytes, lengths in f32 elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    /// Tensors with equal keys share kernel, parameter buffer and gradient buffer.
    pub(crate) key: usize,
    pub(crate) param_offset: u64,
    pub(crate) grad_offset: u64,
    pub(crate) len: u64,
    /// Elements per kernel invocation, 1 or 4; equal for equal keys. With 4, the caller
    /// guarantees `param_offset % 16 == grad_offset % 16` and that both ranges, rounded out
    /// to 16 bytes, lie inside their buffers.
    pub(crate) lanes: u64,
}

/// The device limits the plan respects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanLimits {
    /// Largest storage binding, in bytes (a multiple of 16).
    pub(crate) max_binding: u64,
    /// Storage binding offset alignment, in bytes (a multiple of 16 if any span has 4 lanes).
    pub(crate) alignment: u64,
    /// Most elements one state buffer may hold (a multiple of 4).
    pub(crate) max_state: u64,
}

/// A contiguous piece of one tensor inside a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Piece {
    pub(crate) tensor: usize,
    /// First element of the piece within its tensor.
    pub(crate) start: u64,
    pub(crate) len: u64,
    /// First element of the piece within the batch's state buffers; congruent to the piece's
    /// parameter and gradient element offsets modulo the batch's lanes.
    pub(crate) state_offset: u64,
    pub(crate) first_workgroup: u32,
    /// Index of the tensor in the batch's uniform array.
    pub(crate) slot: u32,
}

/// One dispatch's worth of pieces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    pub(crate) key: usize,
    /// Bound byte range `[start, end)` of the parameter buffer.
    pub(crate) param_window: (u64, u64),
    /// Bound byte range of the gradient buffer.
    pub(crate) grad_window: (u64, u64),
    pub(crate) pieces: Vec<Piece>,
    /// Tensor index of each uniform slot.
    pub(crate) slots: Vec<usize>,
    /// Elements of each state buffer, a multiple of `lanes`.
    pub(crate) state_len: u64,
    pub(crate) workgroups: u32,
    /// Elements per invocation (the spans' lanes).
    pub(crate) lanes: u64,
}

/// The largest window a batch binds, in bytes, for a device with these limits: within the
/// storage binding and buffer sizes, a multiple of 16, and below 16 GiB, so that element and
/// unit indices inside a window fit in the kernels' u32 (an adapter may allow larger bindings).
pub(crate) fn max_window(max_storage_binding: u64, max_buffer: u64) -> u64 {
    (max_storage_binding.min(max_buffer).min(1 << 34) / 16 * 16).saturating_sub(16)
}

/// Largest `n` such that elements `[at, at + 4n)` can join a window `current` without the
/// window growing past `max` bytes. `None` for an empty window.
fn room(current: Option<(u64, u64)>, at: u64, limits: &PlanLimits) -> u64 {
    let aligned = at - at % limits.alignment;
    let (lo, hi) = match current {
        Some((lo, hi)) => (lo.min(aligned), hi),
        None => (aligned, aligned),
    };
    if hi - lo > limits.max_binding {
        return 0;
    }
    (lo + limits.max_binding).saturating_sub(at) / 4
}

/// Grows a window to hold `bytes` at `at`, its start aligned to `alignment` and its end to
/// `end_alignment`.
fn grow(
    window: &mut (u64, u64),
    empty: bool,
    at: u64,
    bytes: u64,
    alignment: u64,
    end_alignment: u64,
) {
    let aligned = at - at % alignment;
    let end = (at + bytes).next_multiple_of(end_alignment);
    if empty {
        *window = (aligned, end);
    } else {
        window.0 = window.0.min(aligned);
        window.1 = window.1.max(end);
    }
}

/// Plans the batches. Tensors of one key keep their order; keys come in order of first use.
pub(crate) fn plan(spans: &[Span], limits: &PlanLimits) -> Vec<Batch> {
    let mut keys: Vec<usize> = Vec::new();
    for s in spans {
        if !keys.contains(&s.key) {
            keys.push(s.key);
        }
    }
    let mut batches = Vec::new();
    for key in keys {
        // Spans of one key share their lanes.
        let lanes = spans.iter().find(|s| s.key == key).map_or(1, |s| s.lanes);
        let new_batch = || Batch {
            key,
            lanes,
            ..Default::default()
        };
        let mut batch = new_batch();
        for (tensor, span) in spans.iter().enumerate().filter(|(_, s)| s.key == key) {
            let mut start = 0;
            while start < span.len {
                let empty = batch.pieces.is_empty();
                let new_slot = batch.slots.last() != Some(&tensor);
                let param_at = span.param_offset + 4 * start;
                let grad_at = span.grad_offset + 4 * start;
                // The lane of the piece's first element; windows start at multiples of 16
                // bytes, so it is the same in the parameter, gradient and state windows.
                let head = param_at / 4 % lanes;
                let state_at = batch.state_len + (head + lanes - batch.state_len % lanes) % lanes;
                let fits_tables = batch.pieces.len() < MAX_SEGMENTS
                    && (!new_slot || batch.slots.len() < MAX_SEGMENTS);
                let n = if fits_tables {
                    let param = room((!empty).then_some(batch.param_window), param_at, limits);
                    let grad = room((!empty).then_some(batch.grad_window), grad_at, limits);
                    (span.len - start)
                        .min(param)
                        .min(grad)
                        .min(limits.max_state.saturating_sub(state_at))
                } else {
                    0
                };
                if n == 0 {
                    assert!(!empty, "a window smaller than one element");
                    batches.push(std::mem::replace(&mut batch, new_batch()));
                    continue;
                }
                grow(
                    &mut batch.param_window,
                    empty,
                    param_at,
                    4 * n,
                    limits.alignment,
                    4 * lanes,
                );
                grow(
                    &mut batch.grad_window,
                    empty,
                    grad_at,
                    4 * n,
                    limits.alignment,
                    4 * lanes,
                );
                if new_slot {
                    batch.slots.push(tensor);
                }
                batch.pieces.push(Piece {
                    tensor,
                    start,
                    len: n,
                    state_offset: state_at,
                    first_workgroup: batch.workgroups,
                    slot: (batch.slots.len() - 1) as u32,
                });
                batch.state_len = state_at + n;
                batch.workgroups += (head + n).div_ceil(lanes * u64::from(WORKGROUP_SIZE)) as u32;
                start += n;
            }
        }
        if !batch.pieces.is_empty() {
            batches.push(batch);
        }
    }
    for batch in &mut batches {
        batch.state_len = batch.state_len.next_multiple_of(batch.lanes);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: PlanLimits = PlanLimits {
        max_binding: 1 << 30,
        alignment: 256,
        max_state: 1 << 28,
    };

    fn span(key: usize, param_offset: u64, grad_offset: u64, len: u64) -> Span {
        Span {
            key,
            param_offset,
            grad_offset,
            len,
            lanes: 1,
        }
    }

    fn span4(key: usize, param_offset: u64, grad_offset: u64, len: u64) -> Span {
        Span {
            lanes: 4,
            ..span(key, param_offset, grad_offset, len)
        }
    }

    /// Every element of every tensor is covered exactly once, inside its batch's windows.
    fn check_cover(spans: &[Span], batches: &[Batch], limits: &PlanLimits) {
        let mut covered = vec![0u64; spans.len()];
        for b in batches {
            assert!(b.param_window.1 - b.param_window.0 <= limits.max_binding);
            assert!(b.grad_window.1 - b.grad_window.0 <= limits.max_binding);
            assert_eq!(b.param_window.0 % limits.alignment, 0);
            assert_eq!(b.grad_window.0 % limits.alignment, 0);
            assert!(b.state_len <= limits.max_state);
            assert!(b.pieces.len() <= MAX_SEGMENTS && b.slots.len() <= MAX_SEGMENTS);
            let lanes = b.lanes;
            assert_eq!(b.param_window.1 % (4 * lanes), 0);
            assert_eq!(b.grad_window.1 % (4 * lanes), 0);
            assert_eq!(b.state_len % lanes, 0);
            let mut state = 0;
            let mut wg = 0;
            for p in &b.pieces {
                let s = spans[p.tensor];
                assert_eq!(s.key, b.key);
                assert_eq!(s.lanes, lanes);
                assert_eq!(b.slots[p.slot as usize], p.tensor);
                assert_eq!(p.start, covered[p.tensor], "pieces in order, no gaps");
                covered[p.tensor] += p.len;
                let pa = s.param_offset + 4 * p.start;
                let ga = s.grad_offset + 4 * p.start;
                assert!(pa >= b.param_window.0 && pa + 4 * p.len <= b.param_window.1);
                assert!(ga >= b.grad_window.0 && ga + 4 * p.len <= b.grad_window.1);
                // State pieces in order, not overlapping, each at the same lane as its
                // parameter and gradient elements.
                let head = pa / 4 % lanes;
                assert_eq!((ga - b.grad_window.0) / 4 % lanes, head);
                assert_eq!((pa - b.param_window.0) / 4 % lanes, head);
                assert!(p.state_offset >= state && p.state_offset < state + lanes);
                assert_eq!(p.state_offset % lanes, head);
                assert_eq!(p.first_workgroup, wg);
                state = p.state_offset + p.len;
                wg += (head + p.len).div_ceil(256 * lanes) as u32;
            }
            assert_eq!(b.state_len, state.next_multiple_of(lanes));
            assert_eq!(b.workgroups, wg);
        }
        for (c, s) in covered.iter().zip(spans) {
            assert_eq!(*c, s.len);
        }
    }

    #[test]
    fn tensors_sharing_buffers_form_one_batch() {
        let spans: Vec<Span> = (0..148)
            .map(|i| span(0, i * 4000, i * 4000 + 4, 1000))
            .collect();
        let batches = plan(&spans, &BIG);
        assert_eq!(batches.len(), 1);
        check_cover(&spans, &batches, &BIG);
    }

    #[test]
    fn more_tensors_than_slots_split_batches() {
        let spans: Vec<Span> = (0..600).map(|i| span(0, i * 40, i * 40, 10)).collect();
        let batches = plan(&spans, &BIG);
        assert_eq!(batches.len(), 3);
        check_cover(&spans, &batches, &BIG);
    }

    #[test]
    fn keys_do_not_mix() {
        let spans = [span(0, 0, 0, 5), span(1, 0, 0, 7), span(0, 20, 20, 3)];
        let batches = plan(&spans, &BIG);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].slots, [0, 2]);
        check_cover(&spans, &batches, &BIG);
    }

    #[test]
    fn large_tensors_split_across_windows() {
        let small = PlanLimits {
            max_binding: 4096,
            alignment: 256,
            max_state: 1 << 20,
        };
        // Unaligned offsets, a tensor several windows long, and small ones around it.
        let spans = [
            span(0, 12, 40_000, 100),
            span(0, 1_000, 100_000, 5_000),
            span(0, 30_000, 4, 3),
        ];
        let batches = plan(&spans, &small);
        assert!(batches.len() >= 5);
        check_cover(&spans, &batches, &small);
        let state_limited = PlanLimits {
            max_binding: 1 << 20,
            alignment: 4,
            max_state: 1000,
        };
        let batches = plan(&spans, &state_limited);
        check_cover(&spans, &batches, &state_limited);
        assert!(batches.iter().all(|b| b.state_len <= 1000));
    }

    #[test]
    fn vec4_pieces_keep_their_lane_in_state() {
        // Heads 0..3, lengths that end inside a vec4, neighbours sharing a vec4.
        let spans: Vec<Span> = (0..40)
            .map(|i| {
                span4(
                    0,
                    4 * (7 * i + i % 4),
                    4000 + 4 * (7 * i + i % 4),
                    1 + i % 6,
                )
            })
            .collect();
        let batches = plan(&spans, &BIG);
        assert_eq!(batches.len(), 1);
        check_cover(&spans, &batches, &BIG);
        let small = PlanLimits {
            max_binding: 4096,
            alignment: 256,
            max_state: 1000,
        };
        let spans = [
            span4(0, 12, 44, 100),
            span4(0, 1_004, 100_012, 5_001),
            span4(0, 30_008, 8, 3),
            span(1, 4, 8, 5_000),
        ];
        let batches = plan(&spans, &small);
        assert!(batches.len() >= 7);
        check_cover(&spans, &batches, &small);
    }

    #[test]
    fn windows_keep_indices_inside_u32() {
        // An adapter that binds and allocates anything: a 20 GiB tensor is split so that every
        // element offset inside a window, every piece length and every state index fits u32.
        let max_binding = max_window(u64::MAX, u64::MAX);
        assert_eq!(max_binding, (1 << 34) - 16);
        assert_eq!(max_window(8, 1 << 20), 0);
        let huge = PlanLimits {
            max_binding,
            alignment: 256,
            max_state: max_binding / 4 / 3 / 4 * 4,
        };
        let spans = [span4(0, 64, 1 << 40, 5 << 30), span(1, 12, 4, 1 << 33)];
        let batches = plan(&spans, &huge);
        check_cover(&spans, &batches, &huge);
        for b in &batches {
            for p in &b.pieces {
                let s = spans[p.tensor];
                let end = s.param_offset + 4 * (p.start + p.len) - b.param_window.0;
                assert!(end / 4 <= u64::from(u32::MAX) + 1);
                assert!(p.len <= u64::from(u32::MAX));
                assert!((p.state_offset + p.len) * 3 <= u64::from(u32::MAX) + 1);
            }
        }
        assert!(batches.len() >= 4);
    }

    #[test]
    fn zero_length_tensors_are_skipped() {
        let spans = [span(0, 0, 0, 0), span(0, 0, 0, 3)];
        let batches = plan(&spans, &BIG);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].slots, [1]);
        check_cover(&spans, &batches, &BIG);
    }
}
