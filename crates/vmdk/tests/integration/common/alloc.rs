//! The binary's one global allocator (a binary can have only one), counting for two kinds of
//! test: `hostile` caps the largest single allocation made on the thread running a case
//! ([`largest_reset`], [`largest`]: thread-local, so tests on other threads do not disturb
//! it); `ova` measures the bytes the whole process holds ([`live`], [`peak_from`]: process
//! wide, so each of its cases runs in a process of its own, see [`alone`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note(n: usize) {
    let _ = LARGEST.try_with(|m| {
        if n > m.get() {
            m.set(n)
        }
    });
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the only additions are recording a size in a thread-local
// Cell (try_with, so it never allocates or panics during thread teardown) and counting bytes
// in atomics (which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Forget the largest allocation this thread has made so far.
pub fn largest_reset() {
    LARGEST.with(|m| m.set(0));
}

/// The largest single allocation this thread made since [`largest_reset`].
pub fn largest() -> usize {
    LARGEST.with(|m| m.get())
}

/// The bytes the process holds now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Start measuring the process's peak from `base` bytes held; [`peak`] reads it.
pub fn peak_from(base: usize) {
    PEAK.store(base, Ordering::Relaxed);
}

/// The most bytes the process held at once since [`peak_from`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// For a test that measures the whole process: true when this process runs that test alone
/// (it was started by the `false` branch below), so the test goes on and measures. Else the
/// test `name` (`module::test`) runs again, alone, in a child process of this binary
/// (`--exact --test-threads=1`), this asserts that it passed (showing its output), and the
/// caller returns: under nextest (a process per test) and cargo test alike, every
/// measurement is made with no other test running in the process.
pub fn alone(name: &str) -> bool {
    const ALONE: &str = "VMDK_TEST_ALONE";
    if std::env::var_os(ALONE).is_some_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(&exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, name)
        .output()
        .unwrap_or_else(|e| panic!("running {} {name}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name}, run alone in a process of its own, failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprint!("{stderr}");
    false
}
