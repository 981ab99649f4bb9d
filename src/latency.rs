//! A latency histogram with logarithmic buckets (2% wide), so a long live run keeps constant
//! memory and still reports p50 / p99 / max to within 2%.

/// Bucket growth factor.
const GROWTH: f64 = 1.02;

/// Counts of latencies in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

fn bucket(us: u64) -> usize {
    ((us as f64 + 1.0).ln() / GROWTH.ln()) as usize
}

/// The largest latency that falls in bucket `b`.
fn upper(b: usize) -> u64 {
    (GROWTH.powi(b as i32 + 1) - 1.0).floor() as u64
}

impl Histogram {
    /// Records one latency, in microseconds.
    pub fn record(&mut self, us: u64) {
        let b = bucket(us);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.n += 1;
        self.max = self.max.max(us);
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The largest latency recorded (exact, not bucketed).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The latency at quantile `q` (0..=1): an upper bound within 2%, never above the max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(b).min(self.max);
            }
        }
        self.max
    }
}

/// `850 us`, `3.2 ms`, `1.25 s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        u if u < 1_000 => format!("{u} us"),
        u if u < 1_000_000 => format!("{:.1} ms", u as f64 / 1e3),
        u => format!("{:.2} s", u as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_two_percent() {
        let mut h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (q, exact) in [(0.5, 5_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q) as f64;
            assert!(got >= exact && got <= exact * 1.021, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.max(), 10_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
