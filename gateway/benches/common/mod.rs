//! What the benchmarks share: how a set of launched VMs compares with the
//! ideal cover of a demand.

/// Whether to run a scenario: all without arguments, else those whose
/// name contains one (`cargo bench` itself passes `--bench`).
pub fn scenarios() -> impl Fn(&str) -> bool {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    move |name| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

/// `vms=… cost_per_hour=… ideal_lower_bound=… over_ideal_pct=…
/// cpu_used_pct=… mem_used_pct=…` for `launched` VMs, each
/// `(millicores, bytes, micro-dollars per hour)`, covering `cpu`
/// millicores and `mem` bytes, when `types` could have been launched.
pub fn cover(
    types: &[(u64, u64, u64)],
    launched: &[(u64, u64, u64)],
    cpu: u64,
    mem: u64,
) -> String {
    let cost: u64 = launched.iter().map(|v| v.2).sum();
    let cap_cpu: u64 = launched.iter().map(|v| v.0).sum();
    let cap_mem: u64 = launched.iter().map(|v| v.1).sum();
    // No cover of the demand can cost less than the cheapest price per core
    // times the cores, nor less than the cheapest price per byte times the
    // bytes: the larger of the two is a lower bound on the ideal.
    let cheapest = |f: fn(&(u64, u64, u64)) -> u64| {
        types
            .iter()
            .map(|t| t.2 as f64 / f(t) as f64)
            .fold(f64::MAX, f64::min)
    };
    let ideal = (cpu as f64 * cheapest(|t| t.0)).max(mem as f64 * cheapest(|t| t.1));
    format!(
        "vms={} cost_per_hour={:.3} ideal_lower_bound={:.3} over_ideal_pct={:.2} cpu_used_pct={:.1} mem_used_pct={:.1}",
        launched.len(),
        cost as f64 / 1e6,
        ideal / 1e6,
        (cost as f64 / ideal - 1.0) * 100.0,
        cpu as f64 / cap_cpu as f64 * 100.0,
        mem as f64 / cap_mem as f64 * 100.0,
    )
}
