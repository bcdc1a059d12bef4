//! An Envoy bootstrap's controller cluster over TLS: the transport socket
//! `envoy-tls.yaml` ships, trusting a test's CA.

use crate::EnvoyConfig;
use anyhow::{Result, anyhow};
use serde_yaml_ng::Value;

/// The cluster the filter syncs with the controller through.
const CONTROLLER: &str = "coalmine_controller";

impl EnvoyConfig {
    /// Points the `coalmine_controller` cluster at `c`; when it serves
    /// HTTPS, with the transport socket `envoy-tls.yaml` ships, trusting
    /// its CA.
    pub fn controller(self, c: &crate::ControllerProc) -> Result<EnvoyConfig> {
        self.upstream(CONTROLLER, c.addr)?
            .controller_tls(c.ca_file())
    }

    /// The `coalmine_controller` cluster syncing over TLS (the transport
    /// socket of `envoy-tls.yaml`) and trusting the CA in `ca_file`; as it
    /// is without one.
    pub fn controller_tls(mut self, ca_file: Option<&std::path::Path>) -> Result<EnvoyConfig> {
        let Some(ca) = ca_file else {
            return Ok(self);
        };
        let mut tls = EnvoyConfig::shipped("envoy-tls.yaml")?;
        let socket = tls.cluster(CONTROLLER)?["transport_socket"].clone();
        self.cluster(CONTROLLER)?["transport_socket"] = socket;
        self.upstream_tls(CONTROLLER, ca, crate::SERVER_NAME)
    }

    /// Has the named cluster's TLS (a shipped `envoy-tls.yaml`) trust the
    /// CA in the PEM file `ca_file` and expect `server_name` on the
    /// certificate (sent as SNI and matched against its names).
    pub fn upstream_tls(
        mut self,
        cluster: &str,
        ca_file: &std::path::Path,
        server_name: &str,
    ) -> Result<EnvoyConfig> {
        let tls = &mut self.cluster(cluster)?["transport_socket"]["typed_config"];
        tls["sni"] = Value::from(server_name);
        let validation = &mut tls["common_tls_context"]["validation_context"];
        validation["trusted_ca"]["filename"] = Value::from(ca_file.display().to_string());
        let names = validation["match_typed_subject_alt_names"].as_sequence_mut();
        for n in names.ok_or_else(|| anyhow!("cluster {cluster} has no TLS matching a name"))? {
            n["matcher"]["exact"] = Value::from(server_name);
        }
        Ok(self)
    }
}
