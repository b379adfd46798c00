//! The per-token path allocates nothing: after a prefill on a state with its positions
//! reserved, decode steps of the real model make no heap allocation on any thread.

mod common;

use bitnet::model::Model;
use bitnet::session::Session;
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting every allocation and reallocation.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_nothing() {
    for weights in ["i2_s", "tl2"] {
        let model = Model::load(converted(weights, "f32")).unwrap();
        for threads in [1, 2] {
            let mut session = Session::new(&model).with_threads(threads);
            let mut state = model.new_state();
            state.reserve(64);
            let mut logits = Vec::new();
            let prompt: Vec<u32> = (1..17).collect();
            session
                .forward_into(&mut state, &prompt, false, &mut logits)
                .unwrap();
            // One step to let the buffers take a single row's shape.
            session
                .forward_into(&mut state, &[5], false, &mut logits)
                .unwrap();
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for t in 0..16 {
                session
                    .forward_into(&mut state, &[t + 3], false, &mut logits)
                    .unwrap();
            }
            let made = ALLOCATIONS.load(Ordering::SeqCst) - before;
            assert_eq!(
                made, 0,
                "{weights}, {threads} threads: 16 decode steps allocated {made} times"
            );
            assert_eq!(logits.len(), model.config.vocab_size);
        }
    }
}
