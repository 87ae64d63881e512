//! The process allocator (mimalloc) and its settings.
//!
//! mimalloc keeps freed memory for reuse and gives it back to the OS ("purges" it) only after a
//! delay, and only when some thread next allocates or frees; a server that goes quiet after a
//! burst would keep the burst's memory resident indefinitely. Keel purges at once, so memory
//! comes back within seconds of a load ending, and does not back its heap with transparent huge
//! pages (a huge page stays resident while any byte of it is in use).
//!
//! The option numbers are those of mimalloc v3's `mi_option_e` (`include/mimalloc.h`), the
//! version `libmimalloc-sys` builds by default; the test below reads them back.

use libmimalloc_sys as sys;

/// `mi_option_purge_delay`: milliseconds before freed memory is returned to the OS.
const PURGE_DELAY: sys::mi_option_t = 15;
/// `mi_option_arena_purge_mult`: multiplier of the purge delay for arenas.
const ARENA_PURGE_MULT: sys::mi_option_t = 24;
/// `mi_option_allow_thp`: whether heap memory may be backed by transparent huge pages.
const ALLOW_THP: sys::mi_option_t = 43;

/// Applies Keel's allocator settings; call first thing in `main`.
#[allow(unsafe_code)] // The one call into mimalloc's C API; see the SAFETY note.
pub fn configure() {
    for (option, value) in [(PURGE_DELAY, 0), (ARENA_PURGE_MULT, 1), (ALLOW_THP, 0)] {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it takes no
        // pointers, and every option number used here exists in the linked version (v3).
        unsafe { sys::mi_option_set(option, value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // Reads the options back through the same C API.
    fn the_settings_take_effect() {
        configure();
        // SAFETY: `mi_option_get` reads an integer from mimalloc's option table.
        let read = |option| unsafe { sys::mi_option_get(option) };
        assert_eq!(read(PURGE_DELAY), 0);
        assert_eq!(read(ARENA_PURGE_MULT), 1);
        assert_eq!(read(ALLOW_THP), 0);
    }
}
