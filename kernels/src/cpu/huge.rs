//! Memory for repacked weights: large anonymous mappings that end up on transparent huge
//! pages, carved into one region per matrix. A decode step streams every weight once; on 4 KiB
//! pages that is a TLB miss every 4 KiB, and the hardware prefetcher stops at each page's end.
//! Small matrices (most of a small model's) would never fill a 2 MiB page on their own, hence
//! the shared chunks. Where transparent huge pages are off, the same memory simply stays on
//! small pages.
//!
//! Chunks are filled on small pages and moved to huge ones afterwards ([`Arena::settle`], off
//! the request path): faulting in pages advised as huge while packing made the first request
//! wait on the kernel's compaction (tens of milliseconds, more on a fragmented host).

use std::io;
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

/// The huge page size on x86-64 and on aarch64 with 4 KiB base pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// Bytes per shared chunk. Its unused tail costs at most one huge page of memory, since pages
/// are only backed once touched.
const CHUNK: usize = 32 << 20;

/// An anonymous mapping of `bytes` (zero-filled) whose whole 2 MiB pages are advised as huge.
pub fn map_huge(bytes: usize) -> io::Result<MmapMut> {
    let map = MmapMut::map_anon(bytes.max(1))?;
    advise_huge(&map);
    Ok(map)
}

#[cfg(target_os = "linux")]
fn advise_huge(map: &MmapMut) {
    // Only whole aligned huge pages inside the mapping: advising beyond its data would back
    // memory nothing uses.
    let start = map.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE) - start;
    let whole = map.len().saturating_sub(first) / HUGE_PAGE * HUGE_PAGE;
    if whole > 0 {
        // Advice only: a kernel without transparent huge pages refuses it, and small pages work.
        let _ = map.advise_range(memmap2::Advice::HugePage, first, whole);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_map: &MmapMut) {}

/// `map`'s whole huge pages made huge now: advised (so khugepaged also takes them where the
/// kernel cannot collapse on request) and collapsed (Linux 6.1's MADV_COLLAPSE, which copies
/// the pages into huge ones in this thread; other threads keep reading meanwhile).
#[cfg(target_os = "linux")]
fn collapse_huge(map: &MmapMut) {
    const MADV_COLLAPSE: libc::c_int = 25;
    advise_huge(map);
    let start = map.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE) - start;
    let whole = map.len().saturating_sub(first) / HUGE_PAGE * HUGE_PAGE;
    if whole > 0 {
        // SAFETY: the range lies inside the mapping, which stays mapped for this call;
        // collapsing keeps the contents. Older kernels refuse the advice, which changes nothing.
        let _ = unsafe { libc::madvise(map.as_ptr().add(first) as *mut libc::c_void, whole, MADV_COLLAPSE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn collapse_huge(_map: &MmapMut) {}

/// One mapping, shared by the regions carved from it.
struct Chunk {
    base: *mut u8,
    /// Keeps the memory mapped; written only through `base`.
    map: MmapMut,
}

// SAFETY: the mapping is plain memory; regions hand out disjoint parts of it, mutably only
// through `&mut Region`.
unsafe impl Send for Chunk {}
// SAFETY: as for `Send`.
unsafe impl Sync for Chunk {}

/// Hands out regions for packed matrices, filling one chunk after another.
#[derive(Default)]
pub struct Arena {
    /// The chunk being filled and how many of its bytes are taken.
    current: Mutex<Option<(Arc<Chunk>, usize)>>,
    /// Chunks not yet moved to huge pages.
    unsettled: Mutex<Vec<Arc<Chunk>>>,
}

/// A zeroed, 64-byte-aligned run of bytes in an [`Arena`]'s chunk, owned by one matrix.
pub struct Region {
    chunk: Arc<Chunk>,
    offset: usize,
    len: usize,
}

impl Arena {
    /// A region of `bytes` zeroed bytes (rounded up to 64).
    pub fn alloc(&self, bytes: usize) -> io::Result<Region> {
        let len = bytes.next_multiple_of(64);
        if len > CHUNK / 2 {
            // Big matrices get a mapping of their own, huge-paged all the same.
            let chunk = self.new_chunk(len)?;
            return Ok(Region { chunk, offset: 0, len });
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *current {
            Some((chunk, used)) if *used + len <= CHUNK => {
                let region = Region { chunk: Arc::clone(chunk), offset: *used, len };
                *used += len;
                Ok(region)
            }
            _ => {
                let chunk = self.new_chunk(CHUNK)?;
                *current = Some((Arc::clone(&chunk), len));
                Ok(Region { chunk, offset: 0, len })
            }
        }
    }

    fn new_chunk(&self, bytes: usize) -> io::Result<Arc<Chunk>> {
        let mut map = MmapMut::map_anon(bytes)?;
        let chunk = Arc::new(Chunk { base: map.as_mut_ptr(), map });
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::clone(&chunk));
        Ok(chunk)
    }

    /// Whether some chunk is still on small pages.
    pub fn has_unsettled(&self) -> bool {
        !self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Moves every chunk made so far to huge pages (see [`collapse_huge`]); takes as long as
    /// copying them, so callers run it on a thread of its own once packing is done.
    pub fn settle(&self) {
        let chunks = std::mem::take(&mut *self.unsettled.lock().unwrap_or_else(|e| e.into_inner()));
        for chunk in chunks {
            collapse_huge(&chunk.map);
        }
    }
}

impl Region {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `offset..offset + len` lies inside the chunk's mapping, which the `Arc`
        // keeps alive; no other region overlaps it, and writes need `&mut self`.
        unsafe { std::slice::from_raw_parts(self.chunk.base.add(self.offset), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.chunk.base.add(self.offset), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_zeroed_aligned_and_disjoint() {
        let arena = Arena::default();
        let sizes = [100, 64, 5000, CHUNK / 2, CHUNK / 2 + 1, 3];
        let mut regions: Vec<Region> = sizes.iter().map(|&n| arena.alloc(n).expect("alloc")).collect();
        for (i, (r, &n)) in regions.iter_mut().zip(&sizes).enumerate() {
            assert!(r.bytes().len() >= n && r.bytes().len().is_multiple_of(64));
            assert_eq!(r.bytes().as_ptr() as usize % 64, 0);
            assert!(r.bytes().iter().all(|&b| b == 0));
            r.bytes_mut().fill(i as u8 + 1);
        }
        for (i, r) in regions.iter().enumerate() {
            assert!(r.bytes().iter().all(|&b| b == i as u8 + 1), "region {i} was overwritten");
        }
        // Moving the chunks to huge pages keeps every byte.
        assert!(arena.has_unsettled());
        arena.settle();
        assert!(!arena.has_unsettled());
        for (i, r) in regions.iter().enumerate() {
            assert!(r.bytes().iter().all(|&b| b == i as u8 + 1), "region {i} changed when settled");
        }
    }
}
