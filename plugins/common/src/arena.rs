//! The plugins' allocator: a bump arena that lives as long as the instance, i.e. one turn.
//!
//! The host instantiates a plugin afresh for every turn and resets its memory afterwards, so
//! nothing a turn allocates needs to be reusable by a later turn. wasi-libc's dlmalloc does the
//! bookkeeping of a long-lived heap on every call; a streamed turn made several hundred calls (two
//! strings lowered per stream event, a request body built as a JSON tree), a tenth of its
//! instructions. Here an allocation is a pointer bump, and a free gives memory back only when it is
//! the last block (the common pattern: an event's data, read and dropped).
//!
//! Bounded: the arena takes chunks from the system allocator (64 KiB, then doubling, at most
//! [`ARENA_BYTES`], 4032 KiB, in all), blocks of [`LARGE`] or more go to the system allocator
//! directly, and once the chunks are used up every allocation does. So a turn that churns through
//! memory still reuses it, and at most the arena's 4032 KiB of the turn's memory limit (the host's,
//! enforced on the whole linear memory) is held by blocks the arena does not reuse.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

const FIRST_CHUNK: usize = 64 << 10;
const CHUNKS: usize = 6;
/// What the arena's chunks add up to (64 KiB + 128 KiB + … + 2 MiB).
pub const ARENA_BYTES: usize = FIRST_CHUNK * ((1 << CHUNKS) - 1);
/// A block this large or larger goes to the system allocator: it would waste a chunk's tail.
pub const LARGE: usize = 32 << 10;

pub struct TurnArena<B: GlobalAlloc = System> {
    state: UnsafeCell<State>,
    backing: B,
}

#[derive(Clone, Copy)]
struct State {
    /// The current chunk's free space.
    top: usize,
    end: usize,
    /// Every chunk taken, as `(start, end)`; the current one is the last.
    chunks: [(usize, usize); CHUNKS],
    taken: usize,
}

// A plugin is one single-threaded wasm instance: nothing else can reach the state. (A wasm target
// with threads would need a lock: not built for one.)
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for TurnArena {}

impl TurnArena {
    pub const fn new() -> Self {
        Self::over(System)
    }
}

impl Default for TurnArena {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: GlobalAlloc> TurnArena<B> {
    pub const fn over(backing: B) -> Self {
        TurnArena { state: UnsafeCell::new(State { top: 0, end: 0, chunks: [(0, 0); CHUNKS], taken: 0 }), backing }
    }

    /// A bump in the current chunk, or in a new one; `None` when the block is the system
    /// allocator's (large, or the chunks are used up).
    unsafe fn bump(&self, layout: Layout) -> Option<*mut u8> {
        // A chunk is 16-aligned: a stricter alignment is rare and would waste a chunk's start.
        if layout.size() >= LARGE || layout.align() > 16 {
            return None;
        }
        let s = unsafe { &mut *self.state.get() };
        for _ in 0..2 {
            let start = s.top.checked_add(layout.align() - 1)? & !(layout.align() - 1);
            let new_top = start.checked_add(layout.size())?;
            if new_top <= s.end && s.end != 0 {
                s.top = new_top;
                return Some(start as *mut u8);
            }
            if s.taken == CHUNKS {
                return None;
            }
            let size = FIRST_CHUNK << s.taken;
            let chunk = unsafe { self.backing.alloc(Layout::from_size_align(size, 16).ok()?) };
            if chunk.is_null() {
                return None;
            }
            let (start, end) = (chunk as usize, (chunk as usize).checked_add(size)?);
            s.chunks[s.taken] = (start, end);
            s.taken += 1;
            (s.top, s.end) = (start, end);
        }
        None
    }

    /// Whether `ptr` is in one of the arena's chunks, newest first.
    fn owns(&self, ptr: *mut u8) -> bool {
        let s = unsafe { &*self.state.get() };
        let p = ptr as usize;
        s.chunks[..s.taken].iter().rev().any(|&(start, end)| (start..end).contains(&p))
    }
}

unsafe impl<B: GlobalAlloc> GlobalAlloc for TurnArena<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match unsafe { self.bump(layout) } {
            Some(p) => p,
            None => unsafe { self.backing.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            return unsafe { self.backing.dealloc(ptr, layout) };
        }
        let s = unsafe { &mut *self.state.get() };
        if ptr as usize + layout.size() == s.top {
            s.top = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            return unsafe { self.backing.realloc(ptr, layout, new_size) };
        }
        let s = unsafe { &mut *self.state.get() };
        let p = ptr as usize;
        // The last block grows or shrinks in place while its chunk has room (a string pushed to).
        if p + layout.size() == s.top && new_size < LARGE && p + new_size <= s.end {
            s.top = p + new_size;
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counting what reaches it.
    #[derive(Default)]
    struct Counted {
        allocs: AtomicUsize,
        frees: AtomicUsize,
        bytes: AtomicUsize,
    }

    unsafe impl GlobalAlloc for Counted {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(layout.size(), Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.frees.fetch_add(1, Ordering::Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_stricter_alignment_than_a_chunks_goes_to_the_system_allocator() {
        let arena = TurnArena::over(Counted::default());
        let p = unsafe { arena.alloc(layout(64, 4096)) };
        assert_eq!(p as usize % 4096, 0);
        assert!(!arena.owns(p));
        unsafe { arena.dealloc(p, layout(64, 4096)) };
        assert_eq!(arena.backing.frees.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn small_blocks_are_bumped_aligned_and_distinct_from_one_chunk() {
        let arena = TurnArena::over(Counted::default());
        let mut blocks = vec![];
        for (i, align) in [1, 8, 2, 16, 4, 1, 8].into_iter().cycle().take(200).enumerate() {
            let l = layout(1 + i % 37, align);
            let p = unsafe { arena.alloc(l) };
            assert_eq!(p as usize % align, 0);
            unsafe { p.write_bytes(i as u8, l.size()) };
            blocks.push((p, l, i as u8));
        }
        // Nothing overlapped: every block still holds what was written into it.
        for &(p, l, byte) in &blocks {
            assert!(unsafe { std::slice::from_raw_parts(p, l.size()) }.iter().all(|&b| b == byte));
        }
        assert_eq!(arena.backing.allocs.load(Ordering::Relaxed), 1, "one chunk for all of them");
    }

    #[test]
    fn the_last_block_freed_is_reused_and_a_growing_last_block_stays_in_place() {
        let arena = TurnArena::over(Counted::default());
        let a = unsafe { arena.alloc(layout(100, 8)) };
        let b = unsafe { arena.alloc(layout(50, 8)) };
        unsafe { arena.dealloc(b, layout(50, 8)) };
        assert_eq!(unsafe { arena.alloc(layout(50, 8)) }, b, "a freed last block is given again");
        // `a` is not last: its space is not reused.
        unsafe { arena.dealloc(a, layout(100, 8)) };
        assert_ne!(unsafe { arena.alloc(layout(100, 8)) }, a);

        let s = unsafe { arena.alloc(layout(16, 1)) };
        unsafe { s.write_bytes(7, 16) };
        let grown = unsafe { arena.realloc(s, layout(16, 1), 4000) };
        assert_eq!(grown, s, "the last block grows in place");
        // A block that is not last moves, keeping its bytes.
        let _after = unsafe { arena.alloc(layout(8, 1)) };
        let moved = unsafe { arena.realloc(grown, layout(4000, 1), 8000) };
        assert_ne!(moved, grown);
        assert!(unsafe { std::slice::from_raw_parts(moved, 16) }.iter().all(|&b| b == 7));
    }

    #[test]
    fn large_blocks_and_blocks_past_the_arena_go_to_the_system_allocator_and_back() {
        let arena = TurnArena::over(Counted::default());
        let big = unsafe { arena.alloc(layout(LARGE, 8)) };
        assert!(!arena.owns(big));
        assert_eq!(arena.backing.allocs.load(Ordering::Relaxed), 1);
        unsafe { arena.dealloc(big, layout(LARGE, 8)) };
        assert_eq!(arena.backing.frees.load(Ordering::Relaxed), 1, "a system block is freed to the system");

        // Fill every chunk: then the arena stops taking memory and the system allocator serves.
        let block = layout(LARGE - 1, 1);
        let mut owned = 0;
        let mut system = vec![];
        for _ in 0..(ARENA_BYTES / (LARGE - 1) + 10) {
            let p = unsafe { arena.alloc(block) };
            assert!(!p.is_null());
            if arena.owns(p) {
                owned += 1;
            } else {
                system.push(p);
            }
        }
        assert!(owned * (LARGE - 1) > ARENA_BYTES * 9 / 10, "the chunks were used: {owned} blocks");
        assert!(!system.is_empty(), "then the system allocator served");
        let chunk_bytes = ARENA_BYTES + LARGE;
        assert_eq!(arena.backing.bytes.load(Ordering::Relaxed), chunk_bytes + system.len() * (LARGE - 1), "the arena took {CHUNKS} chunks and no more");
        for p in system {
            unsafe { arena.dealloc(p, block) };
        }
    }

    #[test]
    fn a_block_regrown_past_its_chunk_moves_and_keeps_its_bytes() {
        let arena = TurnArena::over(Counted::default());
        // 40 KiB of the first chunk's 64 KiB taken first: the block cannot grow to 32 KiB there.
        for _ in 0..2 {
            unsafe { arena.alloc(layout(20 << 10, 8)) };
        }
        let p = unsafe { arena.alloc(layout(1000, 1)) };
        unsafe { p.write_bytes(3, 1000) };
        let mut q = p;
        let mut size = 1000;
        while size < LARGE - 1 {
            let next = (size * 2).min(LARGE - 1);
            q = unsafe { arena.realloc(q, layout(size, 1), next) };
            size = next;
        }
        assert_ne!(q, p, "moved out of the full chunk");
        assert!(arena.owns(q), "into the arena's next chunk");
        assert_eq!(arena.backing.allocs.load(Ordering::Relaxed), 2, "two chunks taken");
        assert!(unsafe { std::slice::from_raw_parts(q, 1000) }.iter().all(|&b| b == 3));
        // And past LARGE: the system allocator's, still with its bytes.
        let r = unsafe { arena.realloc(q, layout(size, 1), LARGE * 2) };
        assert!(!arena.owns(r));
        assert!(unsafe { std::slice::from_raw_parts(r, 1000) }.iter().all(|&b| b == 3));
        unsafe { arena.dealloc(r, layout(LARGE * 2, 1)) };
    }
}
