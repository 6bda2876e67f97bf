//! The infer service's own Prometheus series: network time per case and per pass, the model
//! versions served, when they were promoted, and GPU memory on CUDA nodes.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

/// Series registered on the service's registry (names get the `gmmas_` prefix from it).
#[derive(Clone, Debug)]
pub struct InferMetrics {
    case_seconds: HistogramVec,
    pass_seconds: HistogramVec,
    model_info: IntGaugeVec,
    promoted: GaugeVec,
    cuda_memory: IntGaugeVec,
    /// The version of each role in `model_info` now, so that a switch removes the old series.
    served: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

const PASS_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0];

impl InferMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let case_seconds = HistogramVec::new(
            HistogramOpts::new("inference_seconds", "Network time of one case (every pass and mirroring)")
                .buckets(PASS_BUCKETS.to_vec()),
            &["device"],
        )?;
        let pass_seconds = HistogramVec::new(
            HistogramOpts::new(
                "inference_pass_seconds",
                "Network time of one case divided by its passes (MC-Dropout passes times test-time mirrorings)",
            )
            .buckets(PASS_BUCKETS.to_vec()),
            &["device"],
        )?;
        let model_info = IntGaugeVec::new(
            Opts::new("model_info", "The model version served for each role (value 1)"),
            &["role", "version"],
        )?;
        let promoted = GaugeVec::new(
            Opts::new(
                "model_promoted_timestamp_seconds",
                "Unix time the served model of each role was promoted (0: bundled, never promoted)",
            ),
            &["role"],
        )?;
        let cuda_memory = IntGaugeVec::new(
            Opts::new("cuda_memory_bytes", "GPU memory in use on each device (all processes), from NVML"),
            &["device"],
        )?;
        for c in [&case_seconds, &pass_seconds] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(model_info.clone()))?;
        registry.register(Box::new(promoted.clone()))?;
        registry.register(Box::new(cuda_memory.clone()))?;
        Ok(InferMetrics { case_seconds, pass_seconds, model_info, promoted, cuda_memory, served: Default::default() })
    }

    /// One analysed case: `seconds` of network time over `passes` passes.
    pub fn observe_case(&self, device: &str, seconds: f64, passes: usize) {
        self.case_seconds.with_label_values(&[device]).observe(seconds);
        self.pass_seconds.with_label_values(&[device]).observe(seconds / passes.max(1) as f64);
    }

    /// The model now served for `role`, and when it was promoted (None: bundled).
    pub fn serving(&self, role: &str, version: &str, promoted_unix: Option<f64>) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = served.insert(role.to_string(), version.to_string())
            && old != version
        {
            let _ = self.model_info.remove_label_values(&[role, &old]);
        }
        self.model_info.with_label_values(&[role, version]).set(1);
        self.promoted.with_label_values(&[role]).set(promoted_unix.unwrap_or(0.0));
    }

    pub fn set_cuda_memory(&self, device: &str, bytes: u64) {
        self.cuda_memory.with_label_values(&[device]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// Reads GPU memory through NVML every `every` until shutdown; on a machine without the NVIDIA
/// driver it says so once and stops (the series stays absent).
pub fn spawn_cuda_memory(metrics: InferMetrics, every: std::time::Duration, shutdown: gmmas_runtime::Shutdown) {
    tokio::spawn(async move {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(error = %e, "NVML not available; GPU memory is not reported");
                return;
            }
        };
        loop {
            let count = nvml.device_count().unwrap_or(0);
            for i in 0..count {
                if let Ok(info) = nvml.device_by_index(i).and_then(|d| d.memory_info()) {
                    metrics.set_cuda_memory(&i.to_string(), info.used);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_new_version_replaces_the_old_series_of_its_role_only() {
        let r = Registry::new();
        let m = InferMetrics::register(&r).unwrap();
        m.serving("complete", "a@1", None);
        m.serving("incomplete", "b@1", Some(1_700_000_000.0));
        m.serving("complete", "a@2", Some(1_800_000_000.0));
        let t = text(&r);
        assert!(!t.contains("a@1"), "{t}");
        assert!(t.contains(r#"model_info{role="complete",version="a@2"} 1"#), "{t}");
        assert!(t.contains(r#"model_info{role="incomplete",version="b@1"} 1"#), "{t}");
        assert!(t.contains(r#"model_promoted_timestamp_seconds{role="complete"} 1800000000"#), "{t}");
    }

    #[test]
    fn pass_time_is_case_time_over_passes() {
        let r = Registry::new();
        let m = InferMetrics::register(&r).unwrap();
        m.observe_case("cpu", 8.0, 4);
        let t = text(&r);
        assert!(t.contains(r#"inference_seconds_sum{device="cpu"} 8"#), "{t}");
        assert!(t.contains(r#"inference_pass_seconds_sum{device="cpu"} 2"#), "{t}");
    }
}
