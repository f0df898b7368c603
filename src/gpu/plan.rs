//! Lays out an optimizer's state, and splits its tensors into batches, one dispatch each.
//!
//! **State blocks** are fixed when the optimizer is built: [`state_blocks`] places each
//! tensor's state in a block (one buffer holding the block's state buffers one after the
//! other), splitting a tensor across blocks where one would grow past `max_state`. A tensor
//! planned for vec4 access starts at the same lane of a vec4 in its state as in its parameter
//! buffer.
//!
//! **Batches** follow where the parameters and gradients are, which may change every step:
//! [`plan`] groups the state pieces that share a key (kernel, access mode, parameter buffer
//! and gradient buffer) and a block into batches. Each batch binds one window of the parameter
//! buffer and one of the gradient buffer, each no larger than `max_storage_buffer_binding_size`
//! and starting at an offset aligned to `min_storage_buffer_offset_alignment`; a piece that
//! does not fit one window is split. At most `MAX_SEGMENTS` pieces and `MAX_SEGMENTS` distinct
//! tensors go in one batch. Batches of vec4 access get windows whose ends are rounded up to
//! whole units of 4 elements, and every window ends on a whole 32-bit word. Offsets and windows count each binding's elements in its own size
//! (4 bytes, or 2 for a 16-bit type).

use super::template::{MAX_SEGMENTS, WORKGROUP_SIZE};

/// Where one tensor lives now. Offsets are in bytes, lengths in elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    /// Tensors with equal keys may share a batch: same kernel, access mode, storage types,
    /// parameter buffer and gradient buffer.
    pub(crate) key: usize,
    pub(crate) param_offset: u64,
    pub(crate) grad_offset: u64,
    /// Elements per kernel invocation, 1 or 4; equal for equal keys. With 4, the caller
    /// guarantees that the parameter's and the gradient's element offsets
    /// (`offset / size`) agree modulo 4, that both ranges, rounded out to whole units of 4
    /// elements, lie inside their buffers, and that the tensor's state pieces start at the
    /// same lane as its parameter elements.
    pub(crate) lanes: u64,
    /// Bytes per parameter and per gradient element (4, or 2 for a 16-bit type); equal for
    /// equal keys. Offsets are multiples of them.
    pub(crate) sizes: (u64, u64),
}

/// The device limits the plan respects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanLimits {
    /// Largest storage binding, in bytes (a multiple of 16).
    pub(crate) max_binding: u64,
    /// Storage binding offset alignment, in bytes (a multiple of 16 if any span has 4 lanes).
    pub(crate) alignment: u64,
}

/// One state block: a buffer holding the state of some tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Block {
    /// The tensors' block key (their kernel and access mode).
    pub(crate) key: usize,
    /// Elements of each state buffer in the block, a multiple of `lanes`.
    pub(crate) len: u64,
    /// Elements of the block's master buffer, where its tensors keep master weights, a
    /// multiple of `lanes`: `len`, but for factored state, whose master copies lie in regions
    /// of their own ([`StatePiece::master_offset`]).
    pub(crate) master_len: u64,
    pub(crate) lanes: u64,
}

/// Where a contiguous piece of a tensor keeps its state, for the optimizer's lifetime.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct StatePiece {
    pub(crate) tensor: usize,
    /// First element of the piece within its tensor.
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) block: usize,
    /// First element of the piece within its block's state buffers; for a tensor whose
    /// state is factored, the start of its factor region, a multiple of 4.
    pub(crate) state_offset: u64,
    /// First element of the piece's master copy within its block's master buffer, where the
    /// tensor keeps one ([`StateSpan::master`]): `state_offset`, but for factored state, whose
    /// region holds no element's state, a region of its own at the parameter's lane.
    pub(crate) master_offset: u64,
    /// A factored tensor's only piece, or a whole tensor's ([`StateSpan::whole`]): the plan
    /// never splits it.
    pub(crate) whole: bool,
}

/// One tensor to place in state blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateSpan {
    /// Tensors with equal keys share blocks (same kernel, same access mode).
    pub(crate) key: usize,
    pub(crate) len: u64,
    /// The lane of the tensor's first parameter element (its element offset modulo `lanes`).
    pub(crate) lane: u64,
    pub(crate) lanes: u64,
    /// For a tensor whose state is factored, the elements of its factor region
    /// ([`Factors::footprint`](super::template::Factors::footprint)), at most `max_state`: it is
    /// placed whole at a multiple of 4 elements.
    pub(crate) footprint: Option<u64>,
    /// A tensor whose state is per element but must not be split (Muon's, which matrix
    /// products read whole): placed as any other, at its parameter's lane, in one piece.
    pub(crate) whole: bool,
    /// Whether the tensor keeps an f32 master copy of its parameter, one element per
    /// element, in its block's master buffer: at its state's place where that is per element,
    /// and for factored state in a region of the master buffer of its own (equal for equal
    /// keys).
    pub(crate) master: bool,
}

/// Places every tensor's state: tensors of one key back to back in blocks of at most
/// `max_state` elements (a multiple of 4), each piece at its parameter's lane, and each
/// factor region whole at a multiple of 4, with its master copy, if any, back to back with the
/// block's others at the parameter's lane, in a master buffer of at most `max_state` elements
/// too. Returns the blocks and the pieces, in tensor order.
pub(crate) fn state_blocks(spans: &[StateSpan], max_state: u64) -> (Vec<Block>, Vec<StatePiece>) {
    let mut blocks: Vec<Block> = Vec::new();
    // The open block of each key.
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut pieces = Vec::new();
    // The open block of the span's key, opened if none is.
    fn open_block(blocks: &mut Vec<Block>, open: &mut Vec<(usize, usize)>, s: &StateSpan) -> usize {
        match open.iter().find(|(k, _)| *k == s.key) {
            Some(&(_, b)) => b,
            None => {
                blocks.push(Block {
                    key: s.key,
                    len: 0,
                    master_len: 0,
                    lanes: s.lanes,
                });
                open.push((s.key, blocks.len() - 1));
                blocks.len() - 1
            }
        }
    }
    // The first element at or after `len` that lies at lane `head`.
    let at_lane = |len: u64, head: u64, lanes: u64| len + (head + lanes - len % lanes) % lanes;
    for (tensor, s) in spans.iter().enumerate() {
        if let Some(footprint) = s.footprint {
            // The end of the master copy after a block's others (none without one).
            let master_end = |master_len| {
                if s.master {
                    at_lane(master_len, s.lane, s.lanes) + s.len
                } else {
                    0
                }
            };
            assert!(
                footprint <= max_state && master_end(0) <= max_state,
                "a factor region or its master copy larger than a block"
            );
            let fits = |b: &Block| {
                b.len.next_multiple_of(4) + footprint <= max_state
                    && master_end(b.master_len) <= max_state
            };
            let mut block = open_block(&mut blocks, &mut open, s);
            if !fits(&blocks[block]) {
                open.retain(|(k, _)| *k != s.key);
                block = open_block(&mut blocks, &mut open, s);
            }
            let b = &mut blocks[block];
            let at = b.len.next_multiple_of(4);
            let master_at = at_lane(b.master_len, s.lane, s.lanes);
            pieces.push(StatePiece {
                tensor,
                start: 0,
                len: s.len,
                block,
                state_offset: at,
                master_offset: master_at,
                whole: true,
            });
            b.len = at + footprint;
            if s.master {
                b.master_len = master_at + s.len;
            }
            continue;
        }
        let mut start = 0;
        while start < s.len {
            let block = open_block(&mut blocks, &mut open, s);
            let b = &mut blocks[block];
            let head = (s.lane + start) % s.lanes;
            let at = at_lane(b.len, head, s.lanes);
            let mut n = (s.len - start).min(max_state.saturating_sub(at));
            if s.whole && n < s.len {
                assert!(b.len > 0, "a whole tensor larger than a block");
                n = 0;
            }
            if n == 0 {
                assert!(b.len > 0, "a state block smaller than one vec4");
                open.retain(|(k, _)| *k != s.key);
                continue;
            }
            pieces.push(StatePiece {
                tensor,
                start,
                len: n,
                block,
                state_offset: at,
                master_offset: at,
                whole: s.whole,
            });
            b.len = at + n;
            b.master_len = b.len;
            start += n;
        }
    }
    for b in &mut blocks {
        b.len = b.len.next_multiple_of(b.lanes).max(b.lanes);
        b.master_len = b.master_len.next_multiple_of(b.lanes).max(b.lanes);
    }
    (blocks, pieces)
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
    /// First element of the piece's master copy within the block's master buffer
    /// ([`StatePiece::master_offset`]), likewise congruent.
    pub(crate) master_offset: u64,
    pub(crate) first_workgroup: u32,
    /// Index of the tensor in the batch's uniform array.
    pub(crate) slot: u32,
}

/// One dispatch's worth of pieces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    pub(crate) key: usize,
    /// The state block the batch's pieces keep their state in.
    pub(crate) block: usize,
    /// Bound byte range `[start, end)` of the parameter buffer.
    pub(crate) param_window: (u64, u64),
    /// Bound byte range of the gradient buffer.
    pub(crate) grad_window: (u64, u64),
    pub(crate) pieces: Vec<Piece>,
    /// Tensor index of each uniform slot.
    pub(crate) slots: Vec<usize>,
    /// Elements of each state buffer of the block, a multiple of `lanes`.
    pub(crate) state_len: u64,
    pub(crate) workgroups: u32,
    /// Elements per invocation (the spans' lanes).
    pub(crate) lanes: u64,
    /// Bytes per parameter and per gradient element (the spans' sizes).
    pub(crate) sizes: (u64, u64),
}

/// The largest window a batch binds, in bytes, for a device with these limits: within the
/// storage binding and buffer sizes, a multiple of 16, and below 16 GiB, so that element and
/// unit indices inside a window fit in the kernels' u32 (an adapter may allow larger bindings).
pub(crate) fn max_window(max_storage_binding: u64, max_buffer: u64) -> u64 {
    (max_storage_binding.min(max_buffer).min(1 << 34) / 16 * 16).saturating_sub(16)
}

/// Largest `n` such that `n` elements of `size` bytes from byte `at` can join a window
/// `current` without the window growing past `max` bytes. `None` for an empty window.
fn room(current: Option<(u64, u64)>, at: u64, size: u64, limits: &PlanLimits) -> u64 {
    let aligned = at - at % limits.alignment;
    let (lo, hi) = match current {
        Some((lo, hi)) => (lo.min(aligned), hi),
        None => (aligned, aligned),
    };
    if hi - lo > limits.max_binding {
        return 0;
    }
    (lo + limits.max_binding).saturating_sub(at) / size
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

/// Plans the batches: the state pieces of one span key and one block, in order, grouped into
/// windows. Keys and blocks come in order of first use.
pub(crate) fn plan(
    spans: &[Span],
    state: &[StatePiece],
    blocks: &[Block],
    limits: &PlanLimits,
) -> Vec<Batch> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for p in state {
        let g = (spans[p.tensor].key, p.block);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut batches = Vec::new();
    for (key, block) in groups {
        let first = state
            .iter()
            .find(|p| spans[p.tensor].key == key)
            .map(|p| spans[p.tensor]);
        let (lanes, sizes) = first.map_or((1, (4, 4)), |s| (s.lanes, s.sizes));
        let (param_size, grad_size) = sizes;
        let new_batch = || Batch {
            key,
            block,
            lanes,
            sizes,
            state_len: blocks[block].len,
            ..Default::default()
        };
        let mut batch = new_batch();
        for sp in state
            .iter()
            .filter(|p| p.block == block && spans[p.tensor].key == key)
        {
            let span = spans[sp.tensor];
            let tensor = sp.tensor;
            let mut done = 0;
            while done < sp.len {
                let start = sp.start + done;
                let empty = batch.pieces.is_empty();
                let new_slot = batch.slots.last() != Some(&tensor);
                let param_at = span.param_offset + param_size * start;
                let grad_at = span.grad_offset + grad_size * start;
                // The lane of the piece's first element; windows start at multiples of 16
                // bytes, whole units of either size, so it is the same in the parameter,
                // gradient and state windows.
                let head = param_at / param_size % lanes;
                let state_at = sp.state_offset + done;
                debug_assert!(sp.whole || state_at % lanes == head);
                let fits_tables = batch.pieces.len() < MAX_SEGMENTS
                    && (!new_slot || batch.slots.len() < MAX_SEGMENTS);
                let mut n = if fits_tables {
                    let window = |w| (!empty).then_some(w);
                    let param = room(window(batch.param_window), param_at, param_size, limits);
                    let grad = room(window(batch.grad_window), grad_at, grad_size, limits);
                    (sp.len - done).min(param).min(grad)
                } else {
                    0
                };
                if sp.whole && n < sp.len {
                    assert!(!empty, "a factored tensor larger than a window");
                    n = 0;
                }
                if n == 0 {
                    assert!(!empty, "a window smaller than one element");
                    batches.push(std::mem::replace(&mut batch, new_batch()));
                    continue;
                }
                grow(
                    &mut batch.param_window,
                    empty,
                    param_at,
                    param_size * n,
                    limits.alignment,
                    unit_bytes(param_size, lanes),
                );
                grow(
                    &mut batch.grad_window,
                    empty,
                    grad_at,
                    grad_size * n,
                    limits.alignment,
                    unit_bytes(grad_size, lanes),
                );
                if new_slot {
                    batch.slots.push(tensor);
                }
                batch.pieces.push(Piece {
                    tensor,
                    start,
                    len: n,
                    state_offset: state_at,
                    master_offset: sp.master_offset + done,
                    first_workgroup: batch.workgroups,
                    slot: (batch.slots.len() - 1) as u32,
                });
                batch.workgroups += (head + n).div_ceil(lanes * u64::from(WORKGROUP_SIZE)) as u32;
                done += n;
            }
        }
        if !batch.pieces.is_empty() {
            batches.push(batch);
        }
    }
    batches
}

/// Bytes of a unit of `lanes` elements of `size` bytes as the kernels bind it: at least a
/// 32-bit word, since 16-bit elements are loaded in words and a storage binding's size is a
/// multiple of 4 bytes.
pub(crate) fn unit_bytes(size: u64, lanes: u64) -> u64 {
    (size * lanes).max(4)
}

/// Widens a batch's windows to the whole buffers where they fit one binding, so that the
/// batch's bind group depends on the buffers alone, not on where in them the tensors lie.
/// `sizes` are the parameter and gradient buffers' sizes in bytes.
pub(crate) fn widen(batch: &mut Batch, (param, grad): (u64, u64), limits: &PlanLimits) {
    let whole = |bytes: u64, size: u64| {
        let unit = unit_bytes(size, batch.lanes);
        let end = bytes / unit * unit;
        (end <= limits.max_binding).then_some((0, end))
    };
    if let Some(w) = whole(param, batch.sizes.0)
        && w.1 >= batch.param_window.1
    {
        batch.param_window = w;
    }
    if let Some(w) = whole(grad, batch.sizes.1)
        && w.1 >= batch.grad_window.1
    {
        batch.grad_window = w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: PlanLimits = PlanLimits {
        max_binding: 1 << 30,
        alignment: 256,
    };
    const BIG_STATE: u64 = 1 << 28;

    /// A tensor: its span and its length.
    #[derive(Clone, Copy)]
    struct T {
        key: usize,
        param_offset: u64,
        grad_offset: u64,
        len: u64,
        lanes: u64,
        sizes: (u64, u64),
    }

    fn span(key: usize, param_offset: u64, grad_offset: u64, len: u64) -> T {
        T {
            key,
            param_offset,
            grad_offset,
            len,
            lanes: 1,
            sizes: (4, 4),
        }
    }

    fn span4(key: usize, param_offset: u64, grad_offset: u64, len: u64) -> T {
        T {
            lanes: 4,
            ..span(key, param_offset, grad_offset, len)
        }
    }

    fn spans_of(tensors: &[T]) -> Vec<Span> {
        tensors
            .iter()
            .map(|t| Span {
                key: t.key,
                param_offset: t.param_offset,
                grad_offset: t.grad_offset,
                lanes: t.lanes,
                sizes: t.sizes,
            })
            .collect()
    }

    /// State blocks by the spans' keys, then the batches.
    fn plan_all(
        spans: &[T],
        limits: &PlanLimits,
        max_state: u64,
    ) -> (Vec<Block>, Vec<StatePiece>, Vec<Batch>) {
        let state: Vec<StateSpan> = spans
            .iter()
            .map(|s| StateSpan {
                key: s.key,
                len: s.len,
                lane: s.param_offset / s.sizes.0 % s.lanes,
                lanes: s.lanes,
                footprint: None,
                whole: false,
                master: false,
            })
            .collect();
        let (blocks, pieces) = state_blocks(&state, max_state);
        let batches = plan(&spans_of(spans), &pieces, &blocks, limits);
        (blocks, pieces, batches)
    }

    /// Every element of every tensor is covered exactly once, inside its batch's windows, with
    /// its state where the state blocks put it.
    fn check_cover(
        spans: &[T],
        (blocks, state, batches): &(Vec<Block>, Vec<StatePiece>, Vec<Batch>),
        limits: &PlanLimits,
        max_state: u64,
    ) {
        // State pieces: in tensor order, each within its block, at its parameter's lane, not
        // overlapping another.
        let mut used: Vec<Vec<(u64, u64)>> = vec![Vec::new(); blocks.len()];
        for p in state {
            let b = blocks[p.block];
            assert!(b.len <= max_state && b.len % b.lanes == 0);
            assert!(p.state_offset + p.len <= b.len);
            assert_eq!(b.master_len, b.len);
            assert_eq!(p.master_offset, p.state_offset);
            let s = spans[p.tensor];
            assert_eq!(
                p.state_offset % b.lanes,
                (s.param_offset / s.sizes.0 + p.start) % b.lanes
            );
            used[p.block].push((p.state_offset, p.state_offset + p.len));
        }
        for u in &mut used {
            u.sort_unstable();
            assert!(u.windows(2).all(|w| w[0].1 <= w[1].0));
        }
        let mut covered = vec![0u64; spans.len()];
        for b in batches {
            assert!(b.param_window.1 - b.param_window.0 <= limits.max_binding);
            assert!(b.grad_window.1 - b.grad_window.0 <= limits.max_binding);
            assert_eq!(b.param_window.0 % limits.alignment, 0);
            assert_eq!(b.grad_window.0 % limits.alignment, 0);
            assert_eq!(b.state_len, blocks[b.block].len);
            assert!(b.pieces.len() <= MAX_SEGMENTS && b.slots.len() <= MAX_SEGMENTS);
            let lanes = b.lanes;
            let (ps, gs) = b.sizes;
            // Whole units, and whole words (a storage binding's size is a multiple of 4).
            for (end, size) in [(b.param_window.1, ps), (b.grad_window.1, gs)] {
                assert_eq!(end % (size * lanes), 0);
                assert_eq!(end % 4, 0);
            }
            let mut wg = 0;
            for p in &b.pieces {
                let s = spans[p.tensor];
                assert_eq!(s.key, b.key);
                assert_eq!(s.lanes, lanes);
                assert_eq!(s.sizes, b.sizes);
                assert_eq!(b.slots[p.slot as usize], p.tensor);
                assert_eq!(p.start, covered[p.tensor], "pieces in order, no gaps");
                covered[p.tensor] += p.len;
                // The piece's state is where the state blocks put it.
                let sp = state
                    .iter()
                    .find(|sp| {
                        sp.tensor == p.tensor && sp.start <= p.start && p.start < sp.start + sp.len
                    })
                    .unwrap();
                assert_eq!(sp.block, b.block);
                assert!(p.start + p.len <= sp.start + sp.len);
                assert_eq!(p.state_offset, sp.state_offset + (p.start - sp.start));
                assert_eq!(p.master_offset, p.state_offset);
                let pa = s.param_offset + ps * p.start;
                let ga = s.grad_offset + gs * p.start;
                assert!(pa >= b.param_window.0 && pa + ps * p.len <= b.param_window.1);
                assert!(ga >= b.grad_window.0 && ga + gs * p.len <= b.grad_window.1);
                // Each at the same lane in its parameter, gradient and state windows.
                let head = pa / ps % lanes;
                assert_eq!((ga - b.grad_window.0) / gs % lanes, head);
                assert_eq!((pa - b.param_window.0) / ps % lanes, head);
                assert_eq!(p.state_offset % lanes, head);
                assert_eq!(p.first_workgroup, wg);
                wg += (head + p.len).div_ceil(256 * lanes) as u32;
            }
            assert_eq!(b.workgroups, wg);
        }
        for (c, s) in covered.iter().zip(spans) {
            assert_eq!(*c, s.len);
        }
    }

    /// Factored tensors of one key and vec4 access, each `(element offset, elements, factor
    /// region)`, keeping master copies or not.
    fn factored_spans(tensors: &[(u64, u64, u64)], master: bool) -> Vec<StateSpan> {
        tensors
            .iter()
            .map(|&(at, len, footprint)| StateSpan {
                key: 0,
                len,
                lane: at % 4,
                lanes: 4,
                footprint: Some(footprint),
                whole: false,
                master,
            })
            .collect()
    }

    /// The spans of those tensors, parameter and gradient at the same element offset of two
    /// f32 buffers.
    fn factored_places(tensors: &[(u64, u64, u64)]) -> Vec<Span> {
        tensors
            .iter()
            .map(|&(at, _, _)| Span {
                key: 0,
                param_offset: 4 * at,
                grad_offset: 4 * at,
                lanes: 4,
                sizes: (4, 4),
            })
            .collect()
    }

    #[test]
    fn factor_regions_are_whole_and_never_split() {
        // Tensors whose state is factored: each region at a multiple of 4 whatever the
        // tensor's lane, a new block where a region would pass `max_state`, and each tensor one
        // piece in one batch, even where the window has less room left than the tensor (the
        // batch then ends before it).
        let limits = PlanLimits {
            max_binding: 4096,
            alignment: 16,
        };
        let tensors = [(1, 300, 50), (401, 800, 90), (1301, 10, 60)];
        let (blocks, pieces) = state_blocks(&factored_spans(&tensors, false), 160);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.whole && p.start == 0));
        assert!(pieces.iter().all(|p| p.state_offset % 4 == 0));
        assert_eq!(
            pieces.iter().map(|p| p.block).collect::<Vec<_>>(),
            [0, 0, 1]
        );
        assert_eq!((pieces[1].state_offset, pieces[2].state_offset), (52, 0));
        let batches = plan(&factored_places(&tensors), &pieces, &blocks, &limits);
        let planned: Vec<Vec<(usize, u64)>> = batches
            .iter()
            .map(|b| b.pieces.iter().map(|p| (p.tensor, p.len)).collect())
            .collect();
        // 4096-byte windows: tensor 1 does not fit after tensor 0 and starts a batch of its
        // own; tensor 2 is in another block.
        assert_eq!(planned, [vec![(0, 300)], vec![(1, 800)], vec![(2, 10)]]);
    }

    #[test]
    fn factored_master_copies_get_regions_of_their_own() {
        // Master copies of factored tensors: per element, at the parameter's lane, back to back
        // in the block's master buffer, and a new block where a copy would pass `max_state`
        // even if the factor region fits.
        let tensors = [(1, 60, 20), (6, 70, 20), (3, 40, 20), (0, 8, 100)];
        let (blocks, pieces) = state_blocks(&factored_spans(&tensors, true), 160);
        let placed: Vec<(usize, u64, u64)> = pieces
            .iter()
            .map(|p| (p.block, p.state_offset, p.master_offset))
            .collect();
        // Tensor 2's copy would end at 135 + 40 > 160 in block 0.
        assert_eq!(placed, [(0, 0, 1), (0, 20, 62), (1, 0, 3), (1, 20, 44)]);
        let lens: Vec<(u64, u64)> = blocks.iter().map(|b| (b.len, b.master_len)).collect();
        assert_eq!(lens, [(40, 132), (120, 52)]);
        // Without master copies the factor regions alone decide: one block.
        let (plain, plain_pieces) = state_blocks(&factored_spans(&tensors, false), 160);
        assert!(plain_pieces.iter().all(|p| p.block == 0));
        assert_eq!((plain[0].len, plain[0].master_len), (160, 4));
        // The batches carry each piece's master offset.
        let limits = PlanLimits {
            max_binding: 4096,
            alignment: 16,
        };
        let batches = plan(&factored_places(&tensors), &pieces, &blocks, &limits);
        let offsets: Vec<(usize, u64)> = batches
            .iter()
            .flat_map(|b| b.pieces.iter().map(|p| (p.tensor, p.master_offset)))
            .collect();
        assert_eq!(offsets, [(0, 1), (1, 62), (2, 3), (3, 44)]);
    }

    #[test]
    fn whole_tensors_are_never_split() {
        // Tensors with state per element that must stay whole (Muon's): each at its
        // parameter's lane, as any tensor, but a new block where the rest of one is too small
        // for the whole tensor, where a vector would be split across the two.
        let state: Vec<StateSpan> = [(1, 100), (7, 60), (2, 30)]
            .iter()
            .map(|&(at, len)| StateSpan {
                key: 0,
                len,
                lane: at % 4,
                lanes: 4,
                footprint: None,
                whole: true,
                master: false,
            })
            .collect();
        let (blocks, pieces) = state_blocks(&state, 160);
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.whole && p.start == 0));
        let placed: Vec<(usize, u64)> = pieces.iter().map(|p| (p.block, p.state_offset)).collect();
        // Tensor 0 at lane 1; tensor 1 (lane 3) would end past 160 after it: a new block;
        // tensor 2 (lane 2) fits after tensor 1.
        assert_eq!(placed, [(0, 1), (1, 3), (1, 66)]);
        assert_eq!(blocks.len(), 2);
        // Not whole, tensor 1 is split between the two blocks.
        let split: Vec<StateSpan> = state
            .iter()
            .map(|s| StateSpan { whole: false, ..*s })
            .collect();
        let (_, pieces) = state_blocks(&split, 160);
        assert_eq!(pieces.iter().filter(|p| p.tensor == 1).count(), 2);
    }

    #[test]
    fn tensors_sharing_buffers_form_one_batch() {
        let spans: Vec<T> = (0..148)
            .map(|i| span(0, i * 4000, i * 4000 + 4, 1000))
            .collect();
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 1);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }

    #[test]
    fn more_tensors_than_slots_split_batches() {
        let spans: Vec<T> = (0..600).map(|i| span(0, i * 40, i * 40, 10)).collect();
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 3);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }

    #[test]
    fn keys_do_not_mix() {
        let spans = [span(0, 0, 0, 5), span(1, 0, 0, 7), span(0, 20, 20, 3)];
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 2);
        assert_eq!(planned.2[0].slots, [0, 2]);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }

    #[test]
    fn large_tensors_split_across_windows() {
        let small = PlanLimits {
            max_binding: 4096,
            alignment: 256,
        };
        // Unaligned offsets, a tensor several windows long, and small ones around it.
        let spans = [
            span(0, 12, 40_000, 100),
            span(0, 1_000, 100_000, 5_000),
            span(0, 30_000, 4, 3),
        ];
        let planned = plan_all(&spans, &small, 1 << 20);
        assert!(planned.2.len() >= 5);
        check_cover(&spans, &planned, &small, 1 << 20);
        let wide = PlanLimits {
            max_binding: 1 << 20,
            alignment: 4,
        };
        let planned = plan_all(&spans, &wide, 1000);
        check_cover(&spans, &planned, &wide, 1000);
        assert!(planned.0.len() >= 6);
    }

    #[test]
    fn vec4_pieces_keep_their_lane_in_state() {
        // Heads 0..3, lengths that end inside a vec4, neighbours sharing a vec4.
        let spans: Vec<T> = (0..40)
            .map(|i| {
                span4(
                    0,
                    4 * (7 * i + i % 4),
                    4000 + 4 * (7 * i + i % 4),
                    1 + i % 6,
                )
            })
            .collect();
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 1);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
        let small = PlanLimits {
            max_binding: 4096,
            alignment: 256,
        };
        let spans = [
            span4(0, 12, 44, 100),
            span4(0, 1_004, 100_012, 5_001),
            span4(0, 30_008, 8, 3),
            span(1, 4, 8, 5_000),
        ];
        let planned = plan_all(&spans, &small, 1000);
        assert!(planned.2.len() >= 7);
        check_cover(&spans, &planned, &small, 1000);
    }

    #[test]
    fn sixteen_bit_elements_keep_their_lanes() {
        // bf16 parameters with f32 gradients and the reverse, at odd element offsets, in
        // windows too small for the large tensors: offsets and windows are counted in each
        // binding's own element size.
        let typed = |t: T, sizes| T { sizes, ..t };
        let spans = [
            typed(span4(0, 2 * 5, 4 * 9, 100), (2, 4)),
            typed(span4(0, 2 * 1_003, 4 * 25_003, 5_001), (2, 4)),
            typed(span4(1, 4 * 6, 2 * 10, 3_000), (4, 2)),
            typed(span(2, 2 * 7, 2 * 4_000, 2_500), (2, 2)),
        ];
        let small = PlanLimits {
            max_binding: 4096,
            alignment: 256,
        };
        let planned = plan_all(&spans, &small, 1000);
        check_cover(&spans, &planned, &small, 1000);
        // A 4096-byte window holds 2,048 bf16 elements but 1,024 f32 ones: the f32 gradients
        // bound the batches of the first key.
        assert!(
            planned
                .2
                .iter()
                .all(|b| b.pieces.iter().all(|p| p.len <= 1_024))
        );
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 3);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }

    #[test]
    fn tensors_that_move_keep_their_state() {
        // The state is laid out for one placement; the tensors then move to other buffers
        // (other keys) and offsets at the same lanes, and come apart into other batches.
        let before = [
            span4(0, 20, 20, 10),
            span4(0, 68, 68, 33),
            span4(0, 408, 408, 7),
        ];
        let (blocks, state, _) = plan_all(&before, &BIG, BIG_STATE);
        let after = [
            span4(1, 4096 + 20, 36, 10),
            span4(2, 4096 + 68, 8192 + 68, 33),
            span4(1, 1024 + 408, 2048 + 408, 7),
        ];
        let batches = plan(&spans_of(&after), &state, &blocks, &BIG);
        assert_eq!(batches.len(), 2);
        check_cover(&after, &(blocks, state, batches), &BIG, BIG_STATE);
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
        };
        let max_state = max_binding / 4 / 3 / 4 * 4;
        let spans = [span4(0, 64, 1 << 40, 5 << 30), span(1, 12, 4, 1 << 33)];
        let planned = plan_all(&spans, &huge, max_state);
        check_cover(&spans, &planned, &huge, max_state);
        for b in &planned.2 {
            for p in &b.pieces {
                let s = spans[p.tensor];
                let end = s.param_offset + 4 * (p.start + p.len) - b.param_window.0;
                assert!(end / 4 <= u64::from(u32::MAX) + 1);
                assert!(p.len <= u64::from(u32::MAX));
                assert!((p.state_offset + p.len) * 3 <= u64::from(u32::MAX) + 1);
            }
        }
        assert!(planned.2.len() >= 4);
    }

    #[test]
    fn zero_length_tensors_are_skipped() {
        let spans = [span(0, 0, 0, 0), span(0, 0, 0, 3)];
        let planned = plan_all(&spans, &BIG, BIG_STATE);
        assert_eq!(planned.2.len(), 1);
        assert_eq!(planned.2[0].slots, [1]);
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }

    #[test]
    fn whole_buffers_are_bound_where_they_fit() {
        let spans = [span4(0, 1024, 2048, 100)];
        let mut planned = plan_all(&spans, &BIG, BIG_STATE);
        let b = &mut planned.2[0];
        assert_eq!(b.param_window.0, 1024);
        widen(b, (8000, 1 << 31), &BIG);
        assert_eq!(b.param_window, (0, 8000));
        assert_eq!(
            b.grad_window.0, 2048,
            "a buffer larger than a binding keeps its window"
        );
        check_cover(&spans, &planned, &BIG, BIG_STATE);
    }
}
