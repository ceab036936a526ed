//! What the daemon watches with inotify: `tenants_dir` (directory-level, so editors' atomic
//! renames are seen) and the accounting files in `state_dir/segments`.
//!
//! `tenants_dir` may itself be removed, recreated, or replaced by a rename (configuration
//! management does all three). Its parent is watched too, for the directory's name: when the
//! watched directory goes (`IN_DELETE_SELF`, `IN_MOVE_SELF`, `IN_IGNORED`) the watch is
//! dropped, and when a directory of that name appears again it is watched and rescanned.
//!
//! The accounting files are only ever written through shared mappings, which inotify does not
//! report: a write, truncation or allocation through a descriptor (`IN_MODIFY`) is a tenant
//! tampering with its file, and the daemon repairs it at once.

use anyhow::{Context, Result};
use gpumux_common::config::DaemonConfig;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// The daemon's inotify watches.
pub(super) struct Watches {
    tenants: Inotify,
    dir: PathBuf,
    dir_name: Option<OsString>,
    dir_wd: Option<WatchDescriptor>,
    parent_wd: Option<WatchDescriptor>,
    tamper: Inotify,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

const GONE: AddWatchFlags = AddWatchFlags::IN_DELETE_SELF
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_IGNORED);

fn read_all(inotify: &Inotify) -> Vec<InotifyEvent> {
    let mut all = Vec::new();
    loop {
        match inotify.read_events() {
            Ok(evs) if !evs.is_empty() => all.extend(evs),
            Ok(_) | Err(Errno::EAGAIN) => return all,
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("reading inotify events: {e}");
                return all;
            }
        }
    }
}

impl Watches {
    pub(super) fn new(
        cfg: &DaemonConfig,
        epoll: &Epoll,
        k_tenants: u64,
        k_tamper: u64,
    ) -> Result<Self> {
        let flags = InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK;
        let tenants = Inotify::init(flags)?;
        let tamper = Inotify::init(flags)?;
        let segments = cfg.state_dir.join("segments");
        tamper
            .add_watch(&segments, AddWatchFlags::IN_MODIFY)
            .with_context(|| format!("watching {}", segments.display()))?;
        epoll.add(
            tenants.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, k_tenants),
        )?;
        epoll.add(
            tamper.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, k_tamper),
        )?;
        let mut w = Watches {
            tenants,
            dir: cfg.tenants_dir.clone(),
            dir_name: cfg.tenants_dir.file_name().map(|n| n.to_os_string()),
            dir_wd: None,
            parent_wd: None,
            tamper,
        };
        w.rewatch_tenants_dir();
        if w.dir_wd.is_none() {
            anyhow::bail!("cannot watch {}", cfg.tenants_dir.display());
        }
        Ok(w)
    }

    /// (Re)establishes the watches on `tenants_dir` and its parent, as far as they exist.
    pub(super) fn rewatch_tenants_dir(&mut self) {
        if self.parent_wd.is_none()
            && let Some(parent) = self.dir.parent()
        {
            match self.tenants.add_watch(
                parent,
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
            ) {
                Ok(wd) => self.parent_wd = Some(wd),
                Err(e) => tracing::warn!(
                    dir = %parent.display(),
                    "cannot watch the tenants directory's parent: {e}; if the tenants directory is replaced, send SIGHUP"
                ),
            }
        }
        if let Some(wd) = self.dir_wd.take()
            && let Err(e) = self.tenants.rm_watch(wd)
        {
            tracing::debug!("dropping the old tenants directory watch: {e}");
        }
        match self.tenants.add_watch(&self.dir, DIR_EVENTS) {
            Ok(wd) => self.dir_wd = Some(wd),
            Err(e) => tracing::warn!(
                dir = %self.dir.display(),
                "tenants directory is gone ({e}); watching for it to come back"
            ),
        }
    }

    /// Reads what happened in `tenants_dir`; re-watches it when it was replaced. True when
    /// the tenants should be rescanned.
    pub(super) fn tenants_dir_changed(&mut self) -> bool {
        let mut rescan = false;
        let mut rewatch = false;
        for ev in read_all(&self.tenants) {
            if Some(ev.wd) == self.dir_wd {
                rescan = true;
                if ev.mask.intersects(GONE) {
                    rewatch = true;
                }
            } else if Some(ev.wd) == self.parent_wd {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.parent_wd = None;
                    rewatch = true;
                } else if ev.name.is_some() && ev.name == self.dir_name {
                    rewatch = true;
                    rescan = true;
                }
            }
        }
        if rewatch {
            if self.dir_wd.is_some() {
                tracing::warn!(dir = %self.dir.display(), "tenants directory was removed or moved");
            }
            self.rewatch_tenants_dir();
            if self.dir_wd.is_some() {
                tracing::info!(dir = %self.dir.display(), "watching the tenants directory");
            }
        }
        rescan
    }

    /// Tenants whose accounting file was changed through a descriptor since the last call.
    pub(super) fn tampered_files(&mut self) -> Vec<String> {
        let mut names: Vec<String> = read_all(&self.tamper)
            .into_iter()
            .filter_map(|ev| {
                let name = ev.name?.into_string().ok()?;
                name.strip_suffix(".acct").map(str::to_string)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
