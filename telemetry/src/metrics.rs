//! The process's Prometheus recorder: installed once with each binary's
//! histogram buckets and instance labels, aggregated regularly so memory
//! stays bounded when nobody scrapes, and rendered with the info series
//! (`sentinel_build_info`) that the recorder cannot hold.

use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for one metric name.
pub type Buckets<'a> = (&'a str, &'a [f64]);

struct Installed {
    handle: PrometheusHandle,
    /// Labels every series carries (`node`, `region`, `zone` on a proxy).
    labels: Vec<(String, String)>,
}

static RECORDER: OnceLock<Installed> = OnceLock::new();

/// Installs the global recorder on the first call; later calls return the
/// same handle and ignore their arguments. `labels` are added to every
/// series (Prometheus "global labels"): the instance labels a federated
/// Prometheus needs to tell proxies apart.
pub fn install(buckets: &[Buckets<'_>], labels: &[(&str, String)]) -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, b) in buckets {
                builder = match builder.set_buckets_for_metric(Matcher::Full((*name).into()), b) {
                    Ok(next) => next,
                    // Only an empty bucket list fails: keep the defaults.
                    Err(_) => PrometheusBuilder::new(),
                };
            }
            for (k, v) in labels {
                builder = builder.add_global_label(*k, v.clone());
            }
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (tests): render an empty one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            Installed {
                handle,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.clone()))
                    .collect(),
            }
        })
        .handle
        .clone()
}

/// Histograms keep raw samples until aggregated; aggregate them regularly
/// so memory stays bounded when nobody scrapes `/metrics`.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// One info series (`NAME{labels} 1`) whose label values change at run
/// time, such as the live config version. The recorder cannot remove a
/// label set, so a gauge per value would keep one series per value ever
/// seen; an `Info` holds exactly one and is rendered after the recorder's.
pub struct Info {
    name: &'static str,
    values: Mutex<Vec<(&'static str, String)>>,
}

impl Info {
    pub const fn new(name: &'static str) -> Self {
        Info {
            name,
            values: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the series' labels; an empty list removes the series.
    pub fn set(&self, values: Vec<(&'static str, String)>) {
        if let Ok(mut v) = self.values.lock() {
            *v = values;
        }
    }

    /// Appends the series (with the instance labels) to a rendering.
    pub fn render_into(&self, out: &mut String) {
        let values = self.values.lock().map(|v| v.clone()).unwrap_or_default();
        if values.is_empty() {
            return;
        }
        let instance = RECORDER.get().map(|r| r.labels.as_slice()).unwrap_or(&[]);
        let labels: Vec<String> = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_str()))
            .chain(instance.iter().map(|(k, v)| (k.clone(), v.as_str())))
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        out.push_str(&format!(
            "# TYPE {name} gauge\n{name}{{{}}} 1\n",
            labels.join(","),
            name = self.name
        ));
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_info_series_is_one_line_with_escaped_values_and_goes_when_emptied() {
        static INFO: Info = Info::new("x_info");
        let mut out = String::new();
        INFO.render_into(&mut out);
        assert_eq!(out, "");
        INFO.set(vec![
            ("version", "1".into()),
            ("config_version", "a\"b".into()),
        ]);
        INFO.set(vec![
            ("version", "2".into()),
            ("config_version", "c\\d".into()),
        ]);
        INFO.render_into(&mut out);
        assert_eq!(
            out,
            "# TYPE x_info gauge\nx_info{version=\"2\",config_version=\"c\\\\d\"} 1\n"
        );
        INFO.set(Vec::new());
        let mut out = String::new();
        INFO.render_into(&mut out);
        assert_eq!(out, "");
    }
}
