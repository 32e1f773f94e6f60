//! A sanlock lease this process holds: what it recorded at acquire, and the checks against it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::api::Api;
use super::bounded;
use super::ffi;
use super::registry::{Acquired, Client};
use crate::{LeaseError, LeaseErrorKind};

/// Who the lease on storage names right after our acquire: the version the acquire wrote
/// and the owner record's generation (this host's lockspace generation when it acquired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) lver: u64,
    pub(crate) generation: u64,
}

/// Test hook (feature `test-support`): the code the next owner read after an acquire fails
/// with, 0 for none.
#[cfg(feature = "test-support")]
pub(crate) static FAIL_NEXT_ACQUIRED_READ: std::sync::atomic::AtomicI32 =
    std::sync::atomic::AtomicI32::new(0);

/// Reads the owner record of a lease this host has just acquired. Failing to read it, or
/// finding another owner, fails the acquire: without the stamp `verify` could not tell this
/// acquire from a later one.
pub(crate) fn read_stamp(
    client: &Client,
    res: &ffi::SanlkResource1,
    host_id: u64,
    what: &str,
) -> Result<Stamp, LeaseError> {
    let mut probe = *res;
    let read = |probe: &mut ffi::SanlkResource1| -> Result<Vec<ffi::SanlkHost>, i32> {
        #[cfg(feature = "test-support")]
        match FAIL_NEXT_ACQUIRED_READ.swap(0, Ordering::AcqRel) {
            0 => {}
            rc => return Err(rc),
        }
        client.api.read_resource_owners(probe)
    };
    let owners = read(&mut probe)
        .map_err(|rc| client.err(&format!("{what}: reading the acquired lease"), rc))?;
    stamp_of(&owners, probe.res.lver, host_id).ok_or_else(|| {
        LeaseError::new(
            LeaseErrorKind::Lost,
            format!(
                "{what}: the acquired lease names {} at version {}, not host {host_id}",
                owner_list(&owners),
                probe.res.lver
            ),
        )
    })
}

fn stamp_of(owners: &[ffi::SanlkHost], lver: u64, host_id: u64) -> Option<Stamp> {
    let o = owners.iter().find(|o| o.host_id == host_id)?;
    (lver != 0).then_some(Stamp {
        lver,
        generation: o.generation,
    })
}

fn owner_list(owners: &[ffi::SanlkHost]) -> String {
    if owners.is_empty() {
        return "no owner".into();
    }
    owners
        .iter()
        .map(|o| format!("host {} generation {}", o.host_id, o.generation))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A lease held through this process's registration for its lockspace.
pub(crate) struct Held {
    pub(crate) client: &'static Client,
    pub(crate) acquired: Acquired,
    pub(crate) name: String,
    // Boxed: the struct is 1.2 KiB and every Lease carries one.
    pub(crate) res: Box<ffi::SanlkResource1>,
    pub(crate) host_id: u64,
    pub(crate) stamp: Stamp,
    /// How long one daemon call on its behalf may take (`bounded::call_timeout`).
    pub(crate) timeout: Duration,
}

impl Held {
    fn api(&self) -> &'static Api {
        self.client.api
    }

    /// No I/O and no lock: the registration the lease was taken through is still alive and
    /// the lease was not taken over by another holder in this process.
    pub(crate) fn verify_fast(&self) -> Result<(), LeaseError> {
        let reg = &self.acquired.reg;
        if reg.is_lost() {
            return Err(LeaseError::new(
                LeaseErrorKind::Lost,
                format!(
                    "sanlock registration for lockspace {} was lost ({}); the daemon released this lease",
                    self.acquired_lockspace(),
                    reg.reason()
                ),
            ));
        }
        if self.acquired.revoked.load(Ordering::Acquire) {
            return Err(LeaseError::new(
                LeaseErrorKind::Lost,
                "the lease was released behind this holder's back and acquired again by another holder",
            ));
        }
        Ok(())
    }

    fn acquired_lockspace(&self) -> String {
        let raw = &self.res.res.lockspace_name;
        let bytes: Vec<u8> = raw
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// [`verify_fast`](Self::verify_fast), then the lease on storage must still name this
    /// host with the generation and version recorded at acquire: a different generation means
    /// this host left and re-joined the lockspace since (its leases were dropped then), a
    /// different version means someone acquired the lease since.
    pub(crate) fn verify(&self) -> Result<(), LeaseError> {
        self.verify_fast()?;
        let api = self.api();
        let mut res = *self.res;
        let what = format!("read lease {}", self.name);
        let read = bounded::call(
            &what,
            self.timeout,
            move || api.read_resource_owners(&mut res).map(|o| (o, res)),
            |_| {},
        );
        let (owners, res) = match read {
            Ok(r) => r.map_err(|rc| self.client.err("read lease", rc))?,
            Err(why) => {
                return Err(self
                    .client
                    .no_answer(&self.acquired_lockspace(), &what, &why))
            }
        };
        match stamp_of(&owners, res.res.lver, self.host_id) {
            Some(now) if now == self.stamp => Ok(()),
            _ => Err(LeaseError::new(
                LeaseErrorKind::Lost,
                format!(
                    "the lease is no longer held by host {} generation {} at version {}: \
                     the lease names {} at version {}",
                    self.host_id,
                    self.stamp.generation,
                    self.stamp.lver,
                    owner_list(&owners),
                    res.res.lver
                ),
            )),
        }
    }

    /// Releases through the registration, waiting at most `timeout` for the daemon; when it
    /// does not answer, the registration is shut down instead, which makes the daemon drop
    /// the lease when it runs again.
    pub(crate) fn release(self) -> Result<(), LeaseError> {
        let lockspace = self.acquired_lockspace();
        let what = format!("release lease {}", self.name);
        let Held {
            client,
            acquired,
            name,
            mut res,
            timeout,
            ..
        } = self;
        bounded::call(
            &what,
            timeout,
            move || client.release(&acquired, &name, &mut res),
            |_| {},
        )
        .unwrap_or_else(|why| Err(client.no_answer(&lockspace, &what, &why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: u64, generation: u64) -> ffi::SanlkHost {
        ffi::SanlkHost {
            host_id: id,
            generation,
            ..Default::default()
        }
    }

    #[test]
    fn the_stamp_needs_our_host_and_a_version() {
        let s = Stamp {
            lver: 4,
            generation: 2,
        };
        assert_eq!(stamp_of(&[host(3, 1), host(1, 2)], 4, 1), Some(s));
        assert_eq!(stamp_of(&[host(3, 1)], 4, 1), None);
        assert_eq!(stamp_of(&[], 4, 1), None);
        assert_eq!(stamp_of(&[host(1, 2)], 0, 1), None);
        // A re-joined host (new generation) or a newer acquire gives a different stamp.
        assert_ne!(stamp_of(&[host(1, 3)], 4, 1), Some(s));
        assert_ne!(stamp_of(&[host(1, 2)], 5, 1), Some(s));
        assert_eq!(owner_list(&[]), "no owner");
        assert_eq!(owner_list(&[host(2, 7)]), "host 2 generation 7".to_string());
    }
}
