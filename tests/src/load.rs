//! Steady client traffic in the background, every response remembered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the client saw of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the request was sent.
    pub sent: Instant,
    /// When its response (or failure) arrived.
    pub at: Instant,
    pub status: u16,
    pub served_by: String,
    pub role: Option<String>,
}

/// Requests at a fixed rate until stopped (or dropped).
#[derive(Debug)]
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// GETs `url` `rps` times a second, over a few connections.
    pub fn start(url: String, rps: u32) -> Load {
        Load::start_with(url, rps, None)
    }

    /// `rps` requests a second to `url`: POSTs of `body` if given, else GETs.
    pub fn start_with(url: String, rps: u32, body: Option<serde_json::Value>) -> Load {
        Load::cycling(url, rps, body.into_iter().collect())
    }

    /// `rps` requests a second to `url`: POSTs of `bodies` in turn (GETs
    /// when there are none), e.g. every patient of the data set.
    pub fn cycling(url: String, rps: u32, bodies: Vec<serde_json::Value>) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rps.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for i in 0usize.. {
                tick.tick().await;
                let (client, url, out) = (client.clone(), url.clone(), out.clone());
                let request = match bodies.get(i % bodies.len().max(1)) {
                    Some(b) => client.post(&url).json(b),
                    None => client.get(&url),
                };
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let sample = match request.send().await {
                        Ok(r) => {
                            let h = |n: &str| {
                                r.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            Sample {
                                sent,
                                at: Instant::now(),
                                status: r.status().as_u16(),
                                served_by: h("x-served-by").unwrap_or_default(),
                                role: h("x-coalmine-role"),
                            }
                        }
                        Err(_) => Sample {
                            sent,
                            at: Instant::now(),
                            status: 0,
                            served_by: String::new(),
                            role: None,
                        },
                    };
                    if let Ok(mut s) = out.lock() {
                        s.push(sample);
                    }
                });
            }
        });
        Load { samples, task }
    }

    /// Every response so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Responses received after `t`.
    pub fn since(&self, t: Instant) -> Vec<Sample> {
        self.samples().into_iter().filter(|s| s.at > t).collect()
    }

    /// Waits (up to `timeout`) until at least `n` responses arrived after
    /// `t`, and returns them.
    pub async fn at_least(
        &self,
        n: usize,
        t: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Sample>> {
        crate::poll(&format!("{n} responses"), timeout, || {
            let recent = self.since(t);
            async move { Ok((recent.len() >= n).then_some(recent)) }
        })
        .await
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}
