//! The shipped `docker-compose.yml` as Compose itself reads it, and the
//! Dockerfiles it builds, so that tests can check them and run the same
//! binaries with the same commands and environments as plain processes.

use crate::workspace_root;
use anyhow::{Context as _, Result, anyhow, bail};
use dockerfile_parser::{Dockerfile, Instruction, ShellOrExecExpr};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// `docker-compose.yml` after Compose's own validation and interpolation
/// (`docker-compose config`), every profile included.
#[derive(Debug)]
pub struct Compose {
    pub doc: Value,
}

impl Compose {
    pub fn load() -> Result<Compose> {
        let root = workspace_root();
        let out = Command::new("docker-compose")
            .current_dir(&root)
            .args([
                "--file",
                "docker-compose.yml",
                "--profile",
                "observability",
                "config",
            ])
            // The file's defaults, not whatever this shell exports.
            .env_remove("COALMINE_OPERATOR_TOKEN")
            .env_remove("COALMINE_MODELS_ADMIN_TOKEN")
            .output()
            .context("running docker-compose (`make setup` installs it)")?;
        if !out.status.success() {
            bail!(
                "docker-compose refused docker-compose.yml:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout)?;
        Ok(Compose {
            doc: serde_json::to_value(doc)?,
        })
    }

    pub fn services(&self) -> Vec<String> {
        self.doc["services"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> Result<&Value> {
        let s = &self.doc["services"][name];
        if s.is_null() {
            bail!("docker-compose.yml has no service {name}");
        }
        Ok(s)
    }

    /// The service's command, as a list of arguments.
    pub fn command(&self, name: &str) -> Result<Vec<String>> {
        strings(&self.service(name)?["command"])
            .ok_or_else(|| anyhow!("service {name} has no command list"))
    }

    /// The service's environment.
    pub fn environment(&self, name: &str) -> Result<Vec<(String, String)>> {
        let env = self.service(name)?["environment"]
            .as_object()
            .ok_or_else(|| anyhow!("service {name} has no environment"))?;
        env.iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => bail!("{name}: {k} is {other}, not a string"),
            })
            .collect()
    }

    /// The service's bind mounts as (host path, container path).
    pub fn binds(&self, name: &str) -> Result<Vec<(PathBuf, String)>> {
        let volumes = self.service(name)?["volumes"].as_array().cloned();
        Ok(volumes
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(|v| {
                let mut parts = v.split(':');
                let (host, target) = (parts.next()?, parts.next()?);
                host.starts_with('/')
                    .then(|| (PathBuf::from(host), target.to_string()))
            })
            .collect())
    }

    /// The Dockerfile a service builds, parsed.
    pub fn dockerfile(&self, name: &str) -> Result<Image> {
        let build = &self.service(name)?["build"];
        let context = PathBuf::from(
            build["context"]
                .as_str()
                .ok_or_else(|| anyhow!("service {name} builds nothing"))?,
        );
        let file = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        Image::parse(file)
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A parsed Dockerfile.
#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    pub dockerfile: Dockerfile,
}

impl Image {
    pub fn parse(path: PathBuf) -> Result<Image> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let dockerfile =
            Dockerfile::parse(&text).map_err(|e| anyhow!("parsing {}: {e}", path.display()))?;
        Ok(Image { path, dockerfile })
    }

    /// A global `ARG`'s default.
    pub fn global_arg(&self, name: &str) -> Option<String> {
        self.dockerfile
            .get_global_arg(name)
            .and_then(|a| a.value.as_ref())
            .map(|v| v.to_string())
    }

    /// Each stage's instructions, first to last.
    pub fn stages(&self) -> Vec<Vec<&Instruction>> {
        self.dockerfile
            .iter_stages()
            .map(|s| s.instructions)
            .collect()
    }

    /// The arguments of the final stage's instructions named `keyword`
    /// (`USER`, `EXPOSE` …).
    pub fn final_misc(&self, keyword: &str) -> Vec<String> {
        self.stages()
            .last()
            .map(|s| {
                s.iter()
                    .filter_map(|i| i.as_misc())
                    .filter(|m| m.instruction.content.eq_ignore_ascii_case(keyword))
                    .map(|m| m.arguments.to_string().trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The final stage's `ENTRYPOINT`, in exec form.
    pub fn entrypoint(&self) -> Option<Vec<String>> {
        self.stages().last()?.iter().rev().find_map(|i| match i {
            Instruction::Entrypoint(e) => match &e.expr {
                ShellOrExecExpr::Exec(a) => {
                    Some(a.as_str_vec().iter().map(|s| s.to_string()).collect())
                }
                ShellOrExecExpr::Shell(_) => None,
            },
            _ => None,
        })
    }

    /// The shell commands of every `RUN` in the build stages.
    pub fn build_runs(&self) -> Vec<String> {
        let stages = self.stages();
        stages[..stages.len().saturating_sub(1)]
            .iter()
            .flatten()
            .filter_map(|i| i.as_run())
            .filter_map(|r| r.as_shell().map(|s| s.to_string()))
            .collect()
    }
}
