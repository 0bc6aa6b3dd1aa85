//! Watch the configuration file's directory (editors save by rename; Kubernetes swaps a
//! symlink) and reload on change, debounced. SIGHUP and `POST /reload` share `Shared::reload`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::app::Shared;

/// Quiet period after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Start the watcher task; it ends on hard shutdown.
pub fn watch(shared: Arc<Shared>) -> Result<(), String> {
    let path = shared.config_path.clone();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config watcher error"),
        })
        .map_err(|e| e.to_string())?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // Also watch the file's symlink target directory, if any (ConfigMap `..data` swaps).
    let target_dir = std::fs::canonicalize(&path)
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from));
    if let Some(t) = target_dir.filter(|t| *t != dir) {
        let _ = watcher.watch(&t, RecursiveMode::NonRecursive);
    }
    let hard = shared.hard.clone();
    let sh = shared.clone();
    shared.background.spawn(async move {
        let _watcher = watcher; // keep alive for the task's lifetime
        let mut last = std::fs::read(&sh.config_path).ok();
        loop {
            tokio::select! {
                ev = rx.recv() => if ev.is_none() { return },
                _ = hard.cancelled() => return,
            }
            // Debounce: wait for a quiet period.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    ev = rx.recv() => if ev.is_none() { return },
                    _ = hard.cancelled() => return,
                }
            }
            let now = std::fs::read(&sh.config_path).ok();
            if now.is_none() || now == last {
                continue; // unrelated file in the directory, or a half-written rename
            }
            last = now;
            tracing::info!(path = %sh.config_path.display(), "configuration changed; reloading");
            let _ = sh.reload().await;
        }
    });
    Ok(())
}
