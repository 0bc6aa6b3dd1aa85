//! Watch the configuration file's directory (editors save by rename; Kubernetes swaps a
//! symlink) and the directories of the certificates and geo database it names; reload on
//! change, debounced. SIGHUP and `POST /reload` share `Shared::reload`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::control::shared::Shared;

/// Quiet period after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Every file whose change should trigger a reload.
fn watched_files(shared: &Shared) -> Vec<PathBuf> {
    let snap = shared.edge.snapshot.load();
    let mut files = vec![shared.config_path.clone()];
    for c in &snap.settings.certificates {
        files.push(c.cert.clone());
        files.push(c.key.clone());
    }
    files.extend(snap.settings.geo_database.clone());
    files
}

/// A file's state: size, modification time, and (for the config itself) its content.
type FileState = Option<(u64, Option<std::time::SystemTime>, Vec<u8>)>;

/// What the files look like now.
fn fingerprint(files: &[PathBuf]) -> Vec<FileState> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let meta = std::fs::metadata(f).ok()?;
            let content = if i == 0 {
                std::fs::read(f).ok()?
            } else {
                Vec::new()
            };
            Some((meta.len(), meta.modified().ok(), content))
        })
        .collect()
}

/// The directories to watch for `files`, including symlink targets' directories.
fn dirs_of(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let parent = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        dirs.insert(parent);
        if let Some(target_dir) = std::fs::canonicalize(f)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            dirs.insert(target_dir);
        }
    }
    dirs
}

fn add_watches(w: &mut RecommendedWatcher, have: &mut BTreeSet<PathBuf>, want: BTreeSet<PathBuf>) {
    for d in want {
        if have.contains(&d) {
            continue;
        }
        match w.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                have.insert(d);
            }
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory"),
        }
    }
}

/// Start the watcher task; it ends on hard shutdown.
pub(crate) fn watch(shared: Arc<Shared>) -> Result<(), String> {
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
    let files = watched_files(&shared);
    let config_dir = dirs_of(&files[..1]);
    let mut watching = BTreeSet::new();
    for d in &config_dir {
        watcher
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| format!("{}: {e}", d.display()))?;
        watching.insert(d.clone());
    }
    add_watches(&mut watcher, &mut watching, dirs_of(&files));
    let hard = shared.edge.hard.clone();
    let sh = shared.clone();
    // Taken now, not in the task: a change made right after start must not be missed.
    let mut last = fingerprint(&files);
    shared.background.spawn(async move {
        let mut watcher = watcher;
        let mut files = files;
        loop {
            tokio::select! {
                ev = rx.recv() => if ev.is_none() { return },
                _ = hard.cancelled() => return,
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    ev = rx.recv() => if ev.is_none() { return },
                    _ = hard.cancelled() => return,
                }
            }
            let now = fingerprint(&files);
            if now[0].is_none() || now == last {
                continue; // unrelated file, or the config is mid-replacement
            }
            tracing::info!(path = %sh.config_path.display(), "configuration files changed; reloading");
            // Fingerprint before loading: an edit made during the reload is seen next time.
            last = now;
            let _ = sh.reload().await;
            let new_files = watched_files(&sh);
            if new_files != files {
                add_watches(&mut watcher, &mut watching, dirs_of(&new_files));
                last = fingerprint(&new_files);
                files = new_files;
            }
        }
    });
    Ok(())
}
