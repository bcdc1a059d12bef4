//! Faults a test can inflict on the controller's database.

use crate::workspace_root;
use anyhow::{Context as _, Result, ensure};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Holds SQLite's write lock on `db` from another process until dropped
/// (the child is killed on drop).
#[derive(Debug)]
pub struct DbLock {
    _holder: tokio::process::Child,
}

impl DbLock {
    pub async fn take(db: &std::path::Path) -> Result<DbLock> {
        let script = "import sqlite3, sys, time\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute('BEGIN EXCLUSIVE')\n\
                      print('locked', flush=True)\n\
                      time.sleep(300)\n";
        let mut child = tokio::process::Command::new(workspace_root().join(".venv/bin/python"))
            .args(["-c", script])
            .arg(db)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting python from .venv")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("taking the database lock")??;
        ensure!(line.trim() == "locked", "lock helper said {line:?}");
        Ok(DbLock { _holder: child })
    }
}
