//! A memory read-bandwidth probe: several threads stream-read disjoint parts of a buffer much
//! larger than the last-level cache, summing the words so the loads cannot be skipped.
//! `realm bench` divides the bytes a decode step reads by this to get its time floor.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Result, bail};

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct ReadBandwidth {
    /// Bytes per second of the fastest pass.
    pub bytes_per_s: f64,
    /// Bytes per second of the median pass (the host's other tenants move this).
    pub median_bytes_per_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
    pub passes: usize,
}

/// Reads a `bytes`-long buffer `passes` times on `threads` threads and keeps the fastest pass.
pub fn measure(bytes: usize, threads: usize, passes: usize) -> Result<ReadBandwidth> {
    let threads = threads.max(1);
    let words = bytes / size_of::<u64>();
    if words < threads || passes == 0 {
        bail!("bandwidth probe: {bytes} bytes in {passes} passes over {threads} threads is no measurement");
    }
    // On huge pages where the kernel has them, like the packed weights a decode step reads,
    // so the floor is the one those reads could reach.
    let mut map = realm_kernels::cpu::huge::map_huge(words * size_of::<u64>())
        .map_err(|e| anyhow::anyhow!("bandwidth probe: cannot map a {bytes}-byte buffer: {e}"))?;
    // SAFETY: any bytes are a valid u64; a mapping is page aligned, so nothing is left over.
    let (_, buf, _) = unsafe { map.align_to_mut::<u64>() };
    // Written with distinct non-zero words, by the threads that will read them: untouched
    // pages all map the one zero page, which would be read from cache.
    let chunk = words.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, part) in buf.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                let base = (t * chunk) as u64;
                for (i, w) in part.iter_mut().enumerate() {
                    *w = (base + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                }
            });
        }
    });

    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(chunk).map(|part| s.spawn(move || sum_words(part))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        black_box(total);
        times.push(start.elapsed().as_secs_f64().max(1e-9));
    }
    times.sort_by(f64::total_cmp);
    let read = (words * size_of::<u64>()) as f64;
    Ok(ReadBandwidth {
        bytes_per_s: read / times[0],
        median_bytes_per_s: read / times[times.len() / 2],
        buffer_bytes: bytes,
        threads,
        passes,
    })
}

/// Wrapping sum with eight independent lanes, so the loop vectorises and is load-bound. Each
/// line is fetched ahead as the packed matmuls fetch the weights: a probe slower than the
/// engine's own reads would make a floor it can beat.
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut blocks = words.chunks_exact(acc.len());
    for block in &mut blocks {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let ahead = realm_kernels::cpu::PREFETCH_BYTES;
            _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().cast::<i8>().wrapping_add(ahead));
        }
        for (a, &w) in acc.iter_mut().zip(block) {
            *a = a.wrapping_add(w);
        }
    }
    let tail = blocks.remainder().iter().fold(0u64, |a, &w| a.wrapping_add(w));
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 231);
    }

    #[test]
    fn small_probe_reports_a_positive_rate() -> Result<()> {
        let bw = measure(1 << 20, 2, 2)?;
        assert!(bw.bytes_per_s.is_finite() && bw.bytes_per_s > 0.0);
        assert!(bw.median_bytes_per_s > 0.0 && bw.median_bytes_per_s <= bw.bytes_per_s);
        Ok(())
    }
}
