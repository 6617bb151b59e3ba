//! `discovery "kubernetes"`: the endpoints of one Service, from its
//! `discovery.k8s.io/v1` EndpointSlices, with `kube` and `k8s-openapi`.
//!
//! The source lists and watches the slices labelled
//! `kubernetes.io/service-name=<service>` in `namespace` with
//! `kube::runtime::watcher`, which relists when the API server answers
//! `410 Gone` (the resourceVersion it was watching from is too old) and
//! after any broken watch. All slices of the service are aggregated into one
//! set; a relist replaces the set only when it is complete (`InitDone`), so
//! a relist never shows a half-listed service.
//!
//! Per endpoint (one target per address):
//!
//! - `ready` (unset counts as ready, as the API says) → healthy, weight 1;
//! - `terminating` and `serving` → healthy, weight 0: it drains (no new
//!   requests) instead of vanishing while it finishes the ones it has;
//! - `terminating` and not `serving` → unhealthy, weight 0;
//! - otherwise not ready → unhealthy, weight 1 (it comes back when ready).
//!
//! `port` is a port name (looked up in each slice's `ports`; a slice without
//! that name contributes nothing) or a number (used as is). The endpoint's
//! `zone` becomes the target's zone.
//!
//! The client comes from, in order: the block's `kubeconfig` file (its
//! current context), its `api-server` with `token-file` (and `ca-file`), or
//! the in-cluster service account.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use sentinel_proto as pb;

use crate::runner::{Answer, Source, SourceError};

/// How long the client may take to connect to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Kubernetes {
    spec: pb::KubernetesDiscovery,
    stream: Option<BoxStream<'static, Result<watcher::Event<EndpointSlice>, watcher::Error>>>,
    /// The slices of the service by name, as last complete.
    slices: BTreeMap<String, EndpointSlice>,
    /// Slices of a relist in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<String, EndpointSlice>>,
}

impl Kubernetes {
    pub fn new(spec: pb::KubernetesDiscovery) -> Kubernetes {
        Kubernetes {
            spec,
            stream: None,
            slices: BTreeMap::new(),
            relist: None,
        }
    }

    async fn start(&mut self) -> Result<(), SourceError> {
        let client = client(&self.spec).await?;
        let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client, &self.spec.namespace);
        let selector = format!("kubernetes.io/service-name={}", self.spec.service);
        let config = watcher::Config::default().labels(&selector);
        self.stream = Some(watcher(api, config).boxed());
        Ok(())
    }

    fn answer(&self) -> Answer {
        let mut targets = Vec::new();
        for slice in self.slices.values() {
            targets.extend(slice_targets(slice, &self.spec.port));
        }
        Answer {
            targets,
            next_in: Duration::ZERO,
        }
    }
}

impl Source for Kubernetes {
    async fn next(&mut self) -> Result<Answer, SourceError> {
        if self.stream.is_none() {
            self.start().await?;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(SourceError::new("no watch stream"));
        };
        // Bounded by the watch itself: every event either completes a set
        // (returned) or is part of a relist that ends with InitDone.
        loop {
            let event = match stream.next().await {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    // The watcher relists on its next poll; a half-done
                    // relist is dropped.
                    self.relist = None;
                    return Err(SourceError(format!(
                        "kubernetes {}/{}: {e}",
                        self.spec.namespace, self.spec.service
                    )));
                }
                None => {
                    self.stream = None;
                    return Err(SourceError::new("kubernetes watch stream ended"));
                }
            };
            match event {
                watcher::Event::Init => self.relist = Some(BTreeMap::new()),
                watcher::Event::InitApply(s) => {
                    let key = name_of(&s);
                    self.relist.get_or_insert_with(BTreeMap::new).insert(key, s);
                }
                watcher::Event::InitDone => {
                    self.slices = self.relist.take().unwrap_or_default();
                    return Ok(self.answer());
                }
                watcher::Event::Apply(s) => {
                    self.slices.insert(name_of(&s), s);
                    return Ok(self.answer());
                }
                watcher::Event::Delete(s) => {
                    self.slices.remove(&name_of(&s));
                    return Ok(self.answer());
                }
            }
        }
    }
}

fn name_of(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// The targets one slice contributes for `port` (a name or a number).
pub fn slice_targets(slice: &EndpointSlice, port: &str) -> Vec<pb::Target> {
    let number = match port.parse::<u16>() {
        Ok(n) => Some(n),
        Err(_) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok()),
    };
    let Some(number) = number else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        let (healthy, weight) = if terminating {
            (serving, 0)
        } else {
            (ready, 1)
        };
        for ip in &ep.addresses {
            let address = match ip.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, number).to_string(),
                Err(_) => format!("{ip}:{number}"),
            };
            out.push(pb::Target {
                address,
                weight,
                health: if healthy {
                    pb::TargetHealth::Healthy as i32
                } else {
                    pb::TargetHealth::Unhealthy as i32
                },
                zone: ep.zone.clone().unwrap_or_default(),
            });
        }
    }
    out
}

async fn client(spec: &pb::KubernetesDiscovery) -> Result<kube::Client, SourceError> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| SourceError(format!("kubernetes {what}: {e}"));
    let mut config = if !spec.kubeconfig.is_empty() {
        let kc = kube::config::Kubeconfig::read_from(&spec.kubeconfig)
            .map_err(|e| err(&format!("kubeconfig `{}`", spec.kubeconfig), &e))?;
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| err(&format!("kubeconfig `{}`", spec.kubeconfig), &e))?
    } else if !spec.api_server.is_empty() {
        let uri: http::Uri = spec
            .api_server
            .parse()
            .map_err(|e| err(&format!("api-server `{}`", spec.api_server), &e))?;
        let mut c = kube::Config::new(uri);
        if !spec.token_file.is_empty() {
            // kube sends the file's bytes as the bearer token (and rereads
            // it on rotation); a trailing newline would make every request
            // fail with an obscure header error, so say so plainly.
            let token = std::fs::read_to_string(&spec.token_file)
                .map_err(|e| err(&format!("token-file `{}`", spec.token_file), &e))?;
            if token.trim() != token || token.is_empty() {
                return Err(SourceError(format!(
                    "kubernetes token-file `{}`: the token must be the file's only content, \
                     without a trailing newline or spaces",
                    spec.token_file
                )));
            }
            c.auth_info.token_file = Some(spec.token_file.clone());
        }
        c
    } else {
        kube::Config::incluster().map_err(|e| err("in-cluster config", &e))?
    };
    if !spec.ca_file.is_empty() {
        config.root_cert_file = Some(spec.ca_file.clone().into());
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    kube::Client::try_from(config).map_err(|e| err("client", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            zone: Some("z1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_map_to_health_and_weight() {
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                ep("10.0.0.1", true, true, false),
                ep("10.0.0.2", false, true, true),
                ep("10.0.0.3", false, false, true),
                ep("10.0.0.4", false, false, false),
            ],
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let got: Vec<(String, u32, i32)> = slice_targets(&slice, "http")
            .into_iter()
            .map(|t| (t.address, t.weight, t.health))
            .collect();
        let h = pb::TargetHealth::Healthy as i32;
        let u = pb::TargetHealth::Unhealthy as i32;
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080".to_string(), 1, h),
                ("10.0.0.2:8080".to_string(), 0, h),
                ("10.0.0.3:8080".to_string(), 0, u),
                ("10.0.0.4:8080".to_string(), 1, u),
            ]
        );
        assert_eq!(slice_targets(&slice, "9090")[0].address, "10.0.0.1:9090");
        assert!(slice_targets(&slice, "grpc").is_empty());
    }
}
