//! What a plugin instance may use: memory, CPU time per call, and wall-clock
//! time per call.
//!
//! The host has defaults and maxima ([`HostLimits`]); an upload may ask for
//! its own limits within the maxima ([`RequestedLimits`], stored with the
//! plugin); [`HostLimits::resolve`] turns what was asked into the
//! [`PluginLimits`] an instance runs under. Pure: nothing here runs guests.

use std::time::Duration;

/// The limits one plugin instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Most linear memory the instance may hold, all its memories together.
    pub memory_bytes: usize,
    /// Most CPU time one entry into the guest (instantiation, `init`, one
    /// batch) may use: time spent running guest code on a plugin thread, not
    /// time spent waiting (for a WASI clock, or for a thread to run on).
    pub cpu_deadline: Duration,
    /// Longest one entry into the guest may take by the clock, waiting
    /// included: what ends a guest that sleeps or blocks in WASI.
    pub wall_deadline: Duration,
}

impl PluginLimits {
    /// Checks the limits make sense together: a wall-clock deadline shorter
    /// than the CPU deadline would make the CPU deadline meaningless.
    pub fn check(&self) -> Result<(), String> {
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(format!(
                "memory must be at least {MIN_MEMORY_BYTES} bytes, got {}",
                self.memory_bytes
            ));
        }
        if self.cpu_deadline.is_zero() {
            return Err("the CPU deadline must be more than 0".into());
        }
        if self.wall_deadline < self.cpu_deadline {
            return Err(format!(
                "the wall-clock deadline ({:?}) must be at least the CPU deadline ({:?})",
                self.wall_deadline, self.cpu_deadline
            ));
        }
        Ok(())
    }
}

/// One WebAssembly page: no instance can do with less.
const MIN_MEMORY_BYTES: usize = 64 * 1024;

/// The host's limits: what a plugin gets unless it asked for something else
/// at upload, and the most it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub defaults: PluginLimits,
    pub maxima: PluginLimits,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            defaults: PluginLimits {
                memory_bytes: 64 << 20,
                cpu_deadline: Duration::from_millis(100),
                wall_deadline: Duration::from_secs(1),
            },
            maxima: PluginLimits {
                memory_bytes: 1 << 30,
                cpu_deadline: Duration::from_secs(10),
                wall_deadline: Duration::from_secs(60),
            },
        }
    }
}

impl HostLimits {
    /// Checks the host's own configuration: sensible defaults, within the maxima.
    pub fn check(&self) -> Result<(), String> {
        self.defaults
            .check()
            .map_err(|e| format!("default plugin limits: {e}"))?;
        self.maxima
            .check()
            .map_err(|e| format!("maximum plugin limits: {e}"))?;
        let (d, m) = (&self.defaults, &self.maxima);
        if d.memory_bytes > m.memory_bytes
            || d.cpu_deadline > m.cpu_deadline
            || d.wall_deadline > m.wall_deadline
        {
            return Err(format!(
                "default plugin limits ({d:?}) exceed the maxima ({m:?})"
            ));
        }
        Ok(())
    }

    /// The limits of a plugin that asked for `requested` at upload. What it
    /// left out is the host's default, except that a plugin that asked for a
    /// longer CPU deadline gets a wall-clock deadline of at least twice that
    /// (a CPU-bound call needs some room to wait for a thread). Everything is
    /// capped by the maxima as they are now: they may have been lowered since
    /// the upload.
    pub fn resolve(&self, requested: RequestedLimits) -> PluginLimits {
        let (d, m) = (&self.defaults, &self.maxima);
        let memory_bytes = requested
            .memory_bytes
            .map_or(d.memory_bytes, |b| usize::try_from(b).unwrap_or(usize::MAX))
            .min(m.memory_bytes);
        let cpu_deadline = requested
            .cpu_deadline_ms
            .map_or(d.cpu_deadline, Duration::from_millis)
            .min(m.cpu_deadline);
        let wall_deadline = requested
            .wall_deadline_ms
            .map_or_else(
                || d.wall_deadline.max(cpu_deadline * 2),
                Duration::from_millis,
            )
            .min(m.wall_deadline)
            .max(cpu_deadline);
        PluginLimits {
            memory_bytes,
            cpu_deadline,
            wall_deadline,
        }
    }
}

/// The limits an upload asked for; `None` is the host's default. Stored with
/// the plugin, so a plugin keeps what it asked for across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestedLimits {
    pub memory_bytes: Option<u64>,
    pub cpu_deadline_ms: Option<u64>,
    pub wall_deadline_ms: Option<u64>,
}

/// The upload fields that carry [`RequestedLimits`].
pub const LIMIT_FIELDS: [&str; 3] = ["memory_bytes", "cpu_deadline_ms", "wall_deadline_ms"];

impl RequestedLimits {
    /// Parses the upload fields `memory_bytes`, `cpu_deadline_ms` and
    /// `wall_deadline_ms` (decimal integers) against the host's maxima.
    /// `Err` lists every bad field with what is wrong with it.
    pub fn parse(
        memory_bytes: Option<&str>,
        cpu_deadline_ms: Option<&str>,
        wall_deadline_ms: Option<&str>,
        host: &HostLimits,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let m = &host.maxima;
        let mut errors = Vec::new();
        let mut field = |name: &'static str, raw: Option<&str>, min: u64, max: u64, unit: &str| {
            let raw = raw?;
            match raw.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                Ok(n) => {
                    errors.push((
                        name,
                        format!(
                            "must be between {min} and {max} {unit} (this host's maximum), got {n}"
                        ),
                    ));
                    None
                }
                Err(_) => {
                    errors.push((
                        name,
                        format!("must be a whole number of {unit}, got {raw:?}"),
                    ));
                    None
                }
            }
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let requested = RequestedLimits {
            memory_bytes: field(
                "memory_bytes",
                memory_bytes,
                MIN_MEMORY_BYTES as u64,
                m.memory_bytes as u64,
                "bytes",
            ),
            cpu_deadline_ms: field(
                "cpu_deadline_ms",
                cpu_deadline_ms,
                1,
                millis(m.cpu_deadline),
                "milliseconds",
            ),
            wall_deadline_ms: field(
                "wall_deadline_ms",
                wall_deadline_ms,
                1,
                millis(m.wall_deadline),
                "milliseconds",
            ),
        };
        if let (Some(cpu), Some(wall)) = (requested.cpu_deadline_ms, requested.wall_deadline_ms)
            && wall < cpu
        {
            errors.push((
                "wall_deadline_ms",
                format!("must be at least cpu_deadline_ms ({cpu}), got {wall}"),
            ));
        }
        if errors.is_empty() {
            Ok(requested)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits::default()
    }

    #[test]
    fn the_default_host_limits_are_consistent() {
        assert_eq!(host().check(), Ok(()));
        let mut bad = host();
        bad.defaults.wall_deadline = Duration::from_millis(50);
        assert!(bad.check().unwrap_err().contains("wall-clock"));
        let mut bad = host();
        bad.defaults.memory_bytes = 2 << 30;
        assert!(bad.check().unwrap_err().contains("exceed the maxima"));
    }

    #[test]
    fn nothing_requested_gets_the_defaults() {
        assert_eq!(host().resolve(RequestedLimits::default()), host().defaults);
    }

    #[test]
    fn a_longer_cpu_deadline_brings_a_wall_deadline_of_twice_that() {
        let limits = host().resolve(RequestedLimits {
            cpu_deadline_ms: Some(5_000),
            ..RequestedLimits::default()
        });
        assert_eq!(limits.cpu_deadline, Duration::from_secs(5));
        assert_eq!(limits.wall_deadline, Duration::from_secs(10));
    }

    #[test]
    fn requests_are_capped_by_the_maxima_of_today() {
        let mut lowered = host();
        lowered.maxima.memory_bytes = 128 << 20;
        let limits = lowered.resolve(RequestedLimits {
            memory_bytes: Some(512 << 20),
            cpu_deadline_ms: Some(60_000),
            wall_deadline_ms: Some(600_000),
        });
        assert_eq!(limits.memory_bytes, 128 << 20);
        assert_eq!(limits.cpu_deadline, Duration::from_secs(10));
        assert_eq!(limits.wall_deadline, Duration::from_secs(60));
    }

    #[test]
    fn upload_fields_parse_within_the_maxima_and_name_what_is_wrong() {
        let ok = RequestedLimits::parse(Some("536870912"), Some("5000"), None, &host()).unwrap();
        assert_eq!(ok.memory_bytes, Some(512 << 20));
        assert_eq!(ok.cpu_deadline_ms, Some(5000));
        assert_eq!(ok.wall_deadline_ms, None);

        let errors = RequestedLimits::parse(Some("2147483648"), Some("fast"), Some("0"), &host())
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["memory_bytes", "cpu_deadline_ms", "wall_deadline_ms"]
        );
        assert!(errors[0].1.contains("1073741824"), "{errors:?}");
        assert!(errors[1].1.contains("\"fast\""), "{errors:?}");

        let errors = RequestedLimits::parse(None, Some("2000"), Some("1000"), &host()).unwrap_err();
        assert_eq!(errors[0].0, "wall_deadline_ms");
    }
}
