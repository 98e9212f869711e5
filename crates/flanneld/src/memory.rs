//! Handing freed heap back to the kernel after bursts of work.
//!
//! A reconcile pass over thousands of peers allocates its netlink dumps and work lists and frees them again;
//! glibc's allocator keeps such pages mapped for reuse, so the daemon's resident size would stay at the pass's
//! peak for its whole life. Trimming after a large pass keeps RSS near what is actually live.

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
