//! Per-key model state, stored as an arena: a key maps to a slot index, and each stateful
//! layer keeps its slots' fixed-width rows (hidden and cell vectors, or a convolution/pooling
//! history ring plus a step counter) in pages of `PAGE_SLOTS` contiguous rows.
//!
//! Pages, not one growing `Vec`: growing by doubling reserved up to twice the state and,
//! while reallocating, held the old and the new buffer at once (1 M keys of an LSTM h64:
//! 512 MB of state peaked at 1.16 GB). Only the last page grows (by doubling, up to a full
//! page), so a growth copies at most one page and 50 keys cost 64 slots, not 4096.
//!
//! The layers never own state; whoever drives the model owns an arena and names the slots
//! it wants advanced. A slot can be exported and imported as a flat vector, which is what a
//! snapshot of one key is.

/// What one layer needs per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateSpec {
    /// f32 values per slot.
    pub floats: usize,
    /// Whether the layer counts the steps it has seen (strided and windowed layers).
    pub counter: bool,
}

/// Slots per page.
pub const PAGE_SLOTS: usize = 4096;

/// One layer's slots.
#[derive(Debug, Clone, Default)]
pub struct LayerSlots {
    /// Floats per slot.
    pub width: usize,
    pages: Vec<Vec<f32>>,
    /// Steps seen per slot (layers that count them).
    pub counters: Vec<u64>,
    has_counter: bool,
}

impl LayerSlots {
    /// The state row of `slot`.
    #[inline]
    pub fn row(&self, slot: u32) -> &[f32] {
        let (p, i) = (slot as usize / PAGE_SLOTS, slot as usize % PAGE_SLOTS);
        match self.pages.get(p) {
            Some(page) => &page[i * self.width..(i + 1) * self.width],
            None => &[],
        }
    }

    /// The state row of `slot`, mutable.
    #[inline]
    pub fn row_mut(&mut self, slot: u32) -> &mut [f32] {
        let (p, i) = (slot as usize / PAGE_SLOTS, slot as usize % PAGE_SLOTS);
        let w = self.width;
        match self.pages.get_mut(p) {
            Some(page) => &mut page[i * w..(i + 1) * w],
            None => &mut [],
        }
    }

    /// Makes room for `slots` slots (slots are handed out in order).
    fn grow_to(&mut self, slots: usize) {
        if self.width > 0 {
            let full = PAGE_SLOTS * self.width;
            while self.pages.len() * PAGE_SLOTS < slots {
                if let Some(last) = self.pages.last_mut() {
                    // A page that is left behind is complete: exactly one page long.
                    last.reserve_exact(full - last.len());
                    last.resize(full, 0.0);
                }
                self.pages.push(Vec::new());
            }
            let want = (slots - (self.pages.len() - 1) * PAGE_SLOTS) * self.width;
            let last = self.pages.last_mut().expect("a page");
            if want > last.capacity() {
                let cap = (last.capacity() * 2).max(want).max(64 * self.width).min(full);
                last.reserve_exact(cap - last.len());
            }
            if want > last.len() {
                last.resize(want, 0.0);
            }
        }
        if self.has_counter {
            self.counters.resize(slots, 0);
        }
    }

    /// Steps this layer has seen for `slot` (0 for layers without a counter).
    #[inline]
    pub fn counter(&self, slot: u32) -> u64 {
        if self.has_counter {
            self.counters[slot as usize]
        } else {
            0
        }
    }
}

/// Contiguous per-slot state for every layer of one model.
#[derive(Debug, Clone, Default)]
pub struct StateArena {
    layers: Vec<LayerSlots>,
    slots: usize,
    free: Vec<u32>,
}

impl StateArena {
    /// An empty arena for a model whose layers need `specs` (one per layer).
    pub fn new(specs: &[StateSpec]) -> StateArena {
        StateArena {
            layers: specs
                .iter()
                .map(|s| LayerSlots {
                    width: s.floats,
                    pages: Vec::new(),
                    counters: Vec::new(),
                    has_counter: s.counter,
                })
                .collect(),
            slots: 0,
            free: Vec::new(),
        }
    }

    /// A fresh (zero) slot, reusing a freed one if any.
    pub fn alloc(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            self.reset(slot);
            return slot;
        }
        let slot = self.slots as u32;
        self.slots += 1;
        for l in &mut self.layers {
            l.grow_to(self.slots);
        }
        slot
    }

    /// Makes `slot` exist (slots are handed out in order, so it is at most one past the
    /// last) and zeroes it: a key index that is new or handed out again.
    pub fn fresh(&mut self, slot: u32) {
        if slot as usize >= self.slots {
            debug_assert_eq!(slot as usize, self.slots, "slots are dense");
            self.alloc();
        } else {
            self.reset(slot);
        }
    }

    /// Returns a slot to the free list (its key is gone).
    pub fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Zeroes a slot: the state of a key that has seen nothing.
    pub fn reset(&mut self, slot: u32) {
        for l in &mut self.layers {
            l.row_mut(slot).fill(0.0);
            if l.has_counter {
                l.counters[slot as usize] = 0;
            }
        }
    }

    /// Slots handed out and not released.
    pub fn live(&self) -> usize {
        self.slots - self.free.len()
    }

    /// Bytes of state per slot (floats and counters): the raw cost of one key.
    pub fn bytes_per_slot(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.width * 4 + if l.has_counter { 8 } else { 0 })
            .sum()
    }

    /// Bytes reserved by the buffers (page and counter capacity).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.pages.iter().map(|p| p.capacity() * 4).sum::<usize>() + l.counters.capacity() * 8)
            .sum()
    }

    /// Layer `i`'s slots.
    pub fn layer(&self, i: usize) -> &LayerSlots {
        &self.layers[i]
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut LayerSlots {
        &mut self.layers[i]
    }

    /// One key's whole state as a flat vector (counters as f64-exact values are kept
    /// separately): the unit of a snapshot.
    pub fn export(&self, slot: u32) -> (Vec<f32>, Vec<u64>) {
        let mut floats = Vec::new();
        let mut counters = Vec::new();
        for l in &self.layers {
            floats.extend_from_slice(l.row(slot));
            if l.has_counter {
                counters.push(l.counters[slot as usize]);
            }
        }
        (floats, counters)
    }

    /// Appends one key's state to `floats` and `counters` (what [`StateArena::export`]
    /// returns, without allocating).
    pub fn export_into(&self, slot: u32, floats: &mut Vec<f32>, counters: &mut Vec<u64>) {
        for l in &self.layers {
            floats.extend_from_slice(l.row(slot));
            if l.has_counter {
                counters.push(l.counters[slot as usize]);
            }
        }
    }

    /// Floats and counters per slot: what [`StateArena::import`] expects.
    pub fn slot_shape(&self) -> (usize, usize) {
        (
            self.layers.iter().map(|l| l.width).sum(),
            self.layers.iter().filter(|l| l.has_counter).count(),
        )
    }

    /// Restores a key's state written by [`StateArena::export`] of the same model.
    pub fn import(&mut self, slot: u32, floats: &[f32], counters: &[u64]) {
        let (mut f, mut c) = (0, 0);
        for l in &mut self.layers {
            let w = l.width;
            l.row_mut(slot).copy_from_slice(&floats[f..f + w]);
            f += w;
            if l.has_counter {
                l.counters[slot as usize] = counters[c];
                c += 1;
            }
        }
    }
}
