//! How many threads to run by default: one per physical core. Hyper-threads share a core's
//! execution units, so a second thread per core adds contention, not throughput, to
//! bandwidth- and FMA-bound kernels.

use std::collections::HashSet;
use std::fs;

/// Physical cores this process may run on: distinct (package, core) pairs among the CPUs in
/// its affinity set, read from Linux sysfs; elsewhere, or if sysfs is unreadable, the number
/// of CPUs available to the process.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    sysfs_cores().filter(|&c| c > 0).map_or(logical, |c| c.min(logical))
}

fn sysfs_cores() -> Option<usize> {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut cores = HashSet::new();
    for cpu in parse_cpu_list(online.trim())? {
        let topo = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let package = fs::read_to_string(format!("{topo}/physical_package_id")).ok()?;
        let core = fs::read_to_string(format!("{topo}/core_id")).ok()?;
        cores.insert((package.trim().to_string(), core.trim().to_string()));
    }
    Some(cores.len())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn at_least_one_core_and_no_more_than_cpus() {
        let cores = physical_cores();
        let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert!(cores >= 1 && cores <= logical);
    }
}
