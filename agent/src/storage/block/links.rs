//! Prepared volumes: an activated LV, reached through a link `<links>/<img>/<vol>` to its device.
//!
//! qcow2 chains name their backing file by bare volume UUID, resolved in the directory of the
//! image that holds the link (oVirt's `/run/vdsm/storage/<sd>/<img>`). The link is made when a
//! volume is prepared and removed when its last user on this host is done, under one lock per
//! domain, so a link never outlives its mapping (a loop device number may name another LV
//! later). Links left by a killed agent are removed at start-up ([`super::env::BlockEnv::new`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sdm_lvm::{Activator, ActiveLv, Devices};

use super::error::BlockError;
use crate::storage::backend::Prepared;
use crate::storage::StorageError;

/// Where the special LVs are linked, next to the images' directories.
const DOM_MD: &str = "dom_md";

/// The link directory of one domain.
#[derive(Debug)]
pub struct Links {
    root: PathBuf,
    lock: Mutex<()>,
}

impl Links {
    /// Links under `root` (`<links root>/<sd>`).
    pub fn new(root: PathBuf) -> Links {
        Links {
            root,
            lock: Mutex::new(()),
        }
    }

    /// The directory of an image's links.
    pub fn dir(&self, img: &str) -> PathBuf {
        self.root.join(img)
    }

    /// Activates `vg/lv` and links it as `<img>/<lv>`; the returned value keeps both until it
    /// is dropped. Also gives the LV's size.
    pub fn prepare(
        self: &Arc<Self>,
        activator: &Activator,
        devs: &Devices,
        vg: &str,
        img: &str,
        lv: &str,
    ) -> Result<(Prepared, u64), StorageError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let active = activator
            .activate(devs, vg, lv)
            .map_err(|e| BlockError::Activate {
                lv: format!("{vg}/{lv}"),
                source: e,
            })?;
        let dir = self.dir(img);
        let link = dir.join(lv);
        let made = fs::create_dir_all(&dir)
            .and_then(|()| match fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => std::os::unix::fs::symlink(active.path(), &link),
            })
            .map_err(|e| StorageError::io("link", &link, e));
        if let Err(e) = made {
            drop(active);
            return Err(e);
        }
        let size = active.size();
        let guard = Guard {
            active: Some(active),
            link: link.clone(),
            links: self.clone(),
            activator: activator.clone(),
        };
        Ok((Prepared::guarded(link, Box::new(guard)), size))
    }

    /// Links `dom_md/<name>` to a special LV's device and returns the link: a path that stays
    /// the same across restarts of the agent although a loop-mapped LV gets another device
    /// each time (sanlock keeps the path of a joined lockspace and refuses the same lockspace
    /// under another path).
    pub fn special(&self, name: &str, device: &Path) -> Result<PathBuf, StorageError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.root.join(DOM_MD);
        let link = dir.join(name);
        fs::create_dir_all(&dir)
            .and_then(|()| match fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => std::os::unix::fs::symlink(device, &link),
            })
            .map_err(|e| StorageError::io("link", &link, e))?;
        Ok(link)
    }

    /// Removes a `dom_md` link made by [`special`](Self::special) if it still leads to
    /// `device` (the domain is detached and the device is going away; a link another opening of
    /// the domain made since is left alone).
    pub fn remove_special(&self, link: &Path, device: &Path) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if fs::read_link(link).is_ok_and(|t| t == device) {
            let _ = fs::remove_file(link);
        }
    }

    /// Removes an image's link directory (its volumes are gone).
    pub fn remove_dir(&self, img: &str) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = fs::remove_dir_all(self.dir(img));
    }
}

/// Keeps an LV active and linked; the last user of the LV on this host removes the link.
struct Guard {
    active: Option<ActiveLv>,
    link: PathBuf,
    links: Arc<Links>,
    activator: Activator,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _g = self.links.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(active) = self.active.take() else {
            return;
        };
        let (vg, lv) = (active.vg().to_string(), active.lv().to_string());
        if let Err(e) = active.release() {
            tracing::error!(vg, lv, error = %e, "deactivating a volume failed");
        }
        if self.activator.users(&vg, &lv) == 0 {
            let _ = fs::remove_file(&self.link);
            if let Some(dir) = self.link.parent() {
                // Only when empty: other volumes of the image may be prepared.
                let _ = fs::remove_dir(dir);
            }
        }
    }
}
