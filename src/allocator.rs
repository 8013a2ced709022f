//! Tuning of mimalloc, the allocator of pullahead's binaries.
//!
//! By default mimalloc hands memory it has freed back to the kernel about a
//! second later. A replay grows its tables and score lists by doubling, so
//! it frees large blocks all the time and soon wants the memory again; each
//! return and re-touch costs a page fault and, with transparent huge pages,
//! the kernel zeroing 2 MiB. On a 1M-event replay on a slow host that was
//! up to a tenth of the run. A batch command ends soon anyway, so it keeps
//! what it freed; the long-running `run`, `agent` and `record` keep the
//! default and give memory back.

use libmimalloc_sys as ffi;

/// mimalloc's `mi_option_purge_delay` in the bundled C library (v3, from
/// libmimalloc-sys 0.1.49): the crate exports no constant for it. A test
/// checks that this index still reads as the purge delay's default.
const PURGE_DELAY: ffi::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the kernel. For commands
/// that run to completion (replay, tune). Freed memory is reused before
/// more is asked for, so peak memory grows only a little (a 1M-event
/// replay: 88 MB, against 81-88 MB).
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option, before the command starts any
    // other thread (the binary calls this before running it); mimalloc
    // reads it when it next considers purging.
    unsafe { ffi::mi_option_set(PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_where_we_set_it() {
        // SAFETY: reads an integer option.
        let default = unsafe { ffi::mi_option_get(PURGE_DELAY) };
        // v3's documented default, in milliseconds; another value means the
        // index now names another option (or MIMALLOC_PURGE_DELAY is set).
        assert_eq!(default, 1000, "option {PURGE_DELAY} is not the purge delay");
        keep_freed_memory();
        // SAFETY: as above.
        assert_eq!(unsafe { ffi::mi_option_get(PURGE_DELAY) }, -1);
    }
}
