use half::bf16;

use super::*;

/// Paths that compute in f32 from the cache's values.
const TOL: f32 = 1e-5;
/// `vdpbf16ps` also rounds each softmax weight to bf16 (8 significant bits): relative to the
/// sum of a weighted sum's terms.
const BF16_WEIGHTS_TOL: f32 = 1.0 / 256.0;

/// A bf16 cache's blocked keys and paired values give what the same (rounded) rows give in
/// an f32 cache, for ranges that start and end inside blocks and pairs (and one longer than
/// the backend's tasks, which grows the scratch buffers), for both head sizes
/// the AVX-512 code has and one it has not, in every instantiation this CPU runs. The
/// queries are bf16 values, so only `vdpbf16ps`' rounding of the weights differs.
#[test]
fn bf16_caches_attend_as_f32_rows_do() {
    for hd in [64usize, 128, 32] {
        let (heads, positions) = (2usize, 450usize);
        let stride = heads * hd;
        let value = |i: usize| bf16::from_f32(((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 3.0);
        let keys: Vec<bf16> = (0..positions * stride).map(|i| value(i * 3 + 1)).collect();
        let values: Vec<bf16> = (0..positions * stride).map(value).collect();
        // Slots no position fills hold NaN: no path may read them into a result.
        let mut blocked_k = vec![bf16::NAN; <bf16 as KvElem>::key_slots(positions, stride)];
        let mut paired_v = vec![bf16::NAN; <bf16 as KvElem>::value_slots(positions, stride)];
        for p in 0..positions {
            for j in 0..stride {
                blocked_k[blocked_key(p, j, stride)] = keys[p * stride + j];
                paired_v[paired_value(p, j, stride)] = values[p * stride + j];
            }
        }
        let (k32, v32): (Vec<f32>, Vec<f32>) = keys.iter().zip(&values).map(|(k, v)| (k.to_f32(), v.to_f32())).unzip();
        let q: Vec<f32> = (0..3 * hd).map(|i| bf16::from_f32((i as f32 * 0.37).sin()).to_f32()).collect();
        for range in [0..45, 3..37, 16..32, 5..9, 17..18, 44..45, 4..5, 1..450] {
            let part = 3 * (hd + 2);
            let mut want = vec![0.0; part];
            let full = HeadRows { k: &k32[..], v: &v32[..], stride, offset: hd, len: hd };
            attend_partial(&q, &full, range.clone(), 0.125, &mut want);
            let half = HeadRows { k: &blocked_k[..], v: &paired_v[..], stride, offset: hd, len: hd };
            let mut runs = vec![("scalar", TOL, vec![0.0; part])];
            attend_partial_body(&q, &half, range.clone(), 0.125, &mut runs[0].2);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                let mut got = vec![0.0; part];
                // SAFETY: the features were detected just above.
                unsafe { attend_partial_avx2(&q, &half, range.clone(), 0.125, &mut got) };
                runs.push(("avx2 portable", TOL, got));
                let mut got = vec![0.0; part];
                // SAFETY: as above; the caches are bf16, `hd` a multiple of 16, the stride and
                // offset even.
                unsafe { avx2::attend_partial(&q, &half, range.clone(), 0.125, &mut got) };
                runs.push(("avx2 bf16", TOL, got));
            }
            #[cfg(target_arch = "x86_64")]
            if hd != 32 && bf16_dot() {
                let mut got = vec![0.0; part];
                // SAFETY: the features were detected just above; `hd` is 64 or 128.
                unsafe {
                    match hd {
                        64 => avx512_bf16::attend_partial::<4>(&q, &half, range.clone(), 0.125, &mut got),
                        _ => avx512_bf16::attend_partial::<8>(&q, &half, range.clone(), 0.125, &mut got),
                    }
                }
                runs.push(("avx512 bf16", BF16_WEIGHTS_TOL, got));
            }
            let mut got = vec![0.0; part];
            attend_partial(&q, &half, range.clone(), 0.125, &mut got);
            runs.push(("dispatched", BF16_WEIGHTS_TOL, got));
            for (name, tol, got) in &runs {
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    // A weighted sum's error grows with the sum of its terms' sizes: at most
                    // the sum of the weights (`want[1]` of the head's record) times 1.5.
                    let terms = if i % (hd + 2) < 2 { w.abs() } else { 1.5 * want[i / (hd + 2) * (hd + 2) + 1] };
                    let close = (g - w).abs() <= tol * terms.max(1.0);
                    assert!(close, "{name}: hd {hd}, {range:?}, [{i}]: {g} vs {w}");
                }
            }
        }
    }
}

/// Whether this CPU runs the `vdpbf16ps` code.
#[cfg(target_arch = "x86_64")]
fn bf16_dot() -> bool {
    let found = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bf16");
    if !found {
        eprintln!("skipping the AVX512_BF16 code: this CPU lacks it");
    }
    found
}

#[test]
fn blocked_and_paired_layouts_place_every_element_once() {
    for stride in [2usize, 64, 192] {
        let positions = 37;
        let mut keys = vec![0u8; <bf16 as KvElem>::key_slots(positions, stride)];
        let mut values = vec![0u8; <bf16 as KvElem>::value_slots(positions, stride)];
        for p in 0..positions {
            for j in 0..stride {
                keys[blocked_key(p, j, stride)] += 1;
                values[paired_value(p, j, stride)] += 1;
            }
        }
        assert!(keys.iter().all(|&n| n <= 1) && keys.iter().filter(|&&n| n == 1).count() == positions * stride);
        assert!(values.iter().all(|&n| n <= 1) && values.iter().filter(|&&n| n == 1).count() == positions * stride);
    }
}
