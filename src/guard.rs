//! Third-party decoders (parquet, arrow-csv, arrow-json) can panic on a corrupt file instead
//! of returning an error (the fuzzing bench, `benches/fuzz.rs`, found "column start and
//! length should not be negative" and "Decoder for dict should have been set" in the Parquet
//! reader). Their calls run under [`catch`], which turns such a panic into a message for an
//! error naming the file; [`catching`] lets the binary's panic hook stay quiet about a panic
//! that is caught and reported here.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, returning its panic's message as an error instead of unwinding further.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Whether this thread is inside [`catch`]: a panic now is caught and reported as an error.
pub fn catching() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_its_message_and_the_depth_unwinds() {
        assert!(!super::catching());
        let r: Result<(), String> = super::catch(|| {
            assert!(super::catching());
            panic!("corrupt page {}", 3)
        });
        assert_eq!(r, Err("corrupt page 3".into()));
        assert!(!super::catching());
        assert_eq!(super::catch(|| 5), Ok(5));
    }
}
