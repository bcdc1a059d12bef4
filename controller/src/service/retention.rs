//! Event retention: each deployment keeps its newest `keep` events in the
//! database; older ones are appended to `<archive>/<deployment>.jsonl`
//! (one stored event a line, synced to disk) and only then removed, so the
//! database stays bounded and nothing is lost that the operator chose to
//! keep. Without an archive directory the oldest events are dropped (and
//! logged). Runs every [`RETENTION_EVERY`] from the evaluation loop.
//!
//! An event is archived exactly once: the archive's last id is read back
//! before appending, so a crash between archiving and removing (at worst)
//! removes on the next run what was already archived.

use super::{Controller, ServiceError};
use crate::store::StoredEvent;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(10);
/// Events removed (and archived) per deployment per run, at most.
const BATCH: u32 = 10_000;

/// How many events each deployment keeps, and where older ones go.
#[derive(Clone, Debug)]
pub struct Retention {
    pub keep: u64,
    pub archive: Option<PathBuf>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: 100_000,
            archive: None,
        }
    }
}

/// The id on the last complete line of a JSON-lines archive (none: empty
/// or missing).
fn last_archived_id(path: &Path) -> std::io::Result<Option<i64>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    Ok(tail
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<StoredEvent>(l).ok())
        .map(|e| e.id)
        .next())
}

/// Appends `events` (those after the archive's last id) and syncs.
fn archive(path: &Path, events: &[StoredEvent]) -> std::io::Result<()> {
    let last = last_archived_id(path)?;
    let mut out = String::new();
    for e in events.iter().filter(|e| last.is_none_or(|l| e.id > l)) {
        out.push_str(&serde_json::to_string(e).map_err(std::io::Error::other)?);
        out.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(out.as_bytes())?;
    f.sync_all()
}

impl Controller {
    /// One run of retention over every deployment; returns the events
    /// removed.
    pub async fn apply_retention(&self) -> Result<u64, ServiceError> {
        let Some(retention) = self.settings.retention.clone() else {
            return Ok(0);
        };
        let mut removed = 0;
        for d in self.deployments().await {
            let (count, _) = self.store.event_count(&d.name).await?;
            let excess = count.saturating_sub(retention.keep);
            if excess == 0 {
                continue;
            }
            let limit = u32::try_from(excess).unwrap_or(BATCH).min(BATCH);
            let oldest = self.store.events(&d.name, 0, limit).await?;
            let Some(through) = oldest.last().map(|e| e.id) else {
                continue;
            };
            if let Some(dir) = &retention.archive {
                let path = dir.join(format!("{}.jsonl", d.name));
                let written = std::fs::create_dir_all(dir).and_then(|()| archive(&path, &oldest));
                if let Err(e) = written {
                    tracing::error!(
                        deployment = %d.name,
                        "cannot archive events to {}: {e}; nothing removed",
                        path.display()
                    );
                    continue;
                }
            }
            let n = self.store.prune_events(&d.name, through).await?;
            removed += n;
            match &retention.archive {
                Some(dir) => {
                    tracing::info!(deployment = %d.name, "{n} event(s) through #{through} moved to {}", dir.display())
                }
                None => {
                    tracing::info!(deployment = %d.name, "{n} event(s) through #{through} dropped (retention {}; no archive)", retention.keep)
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalmine_decide::engine::{Event, EventKind};

    fn stored(id: i64) -> StoredEvent {
        StoredEvent {
            id,
            deployment: "d".into(),
            at: 1000,
            event: Event {
                kind: EventKind::Paused,
                actor: "operator".into(),
                reason: format!("pause {id}"),
                numbers: serde_json::Map::new(),
            },
        }
    }

    #[test]
    fn an_event_is_archived_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        assert_eq!(last_archived_id(&path).unwrap(), None);
        archive(&path, &[stored(1), stored(2)]).unwrap();
        // A crash before removal: the next run archives the same again.
        archive(&path, &[stored(1), stored(2), stored(3)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<i64> = text
            .lines()
            .map(|l| serde_json::from_str::<StoredEvent>(l).unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(last_archived_id(&path).unwrap(), Some(3));
    }
}
