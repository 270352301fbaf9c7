//! What every [`MachineStore`] must do, as tests any store runs: its own with `check`, given a
//! way to open a second handle on the same store (another process, another replica).

use std::sync::Arc;

use pxe::{CpuArch, Mac};

use super::{update, Change, MachineStore, Record, StoreError};

const A: Mac = Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0x01]);
const B: Mac = Mac([0x52, 0x54, 0, 0xaa, 0xbb, 0x02]);

fn booted(at: u64) -> Change {
    Change::Booted {
        at,
        arch: Some(CpuArch::Amd64),
        firmware: Some("BIOS PXE, then iPXE".into()),
        uuid: None,
    }
}

/// `f`'s answer once it has one, asking for at most `limit`.
pub(crate) fn eventually<T>(limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = std::time::Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < until,
            "not seen within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs every check on handles `open` gives (each a new handle on one store, empty at first).
pub(crate) fn check(open: &dyn Fn() -> Box<dyn MachineStore>) {
    records_are_changed_by_compare_and_swap(open);
    changes_by_another_handle_are_seen(open);
    racing_writers_lose_nothing(open);
    forget_and_reinstall(open);
}

fn records_are_changed_by_compare_and_swap(open: &dyn Fn() -> Box<dyn MachineStore>) {
    let s = open();
    assert!(s.get(A).unwrap().is_none() && s.cached(A).is_none());
    let r = update(&*s, A, &booted(100)).unwrap().unwrap();
    assert_eq!((r.first_seen, r.last_seen, r.boots), (100, 100, 1));
    let v = s.get(A).unwrap().unwrap();
    assert_eq!(s.cached(A).unwrap(), v);
    // A write from a stale read is refused, and changes nothing.
    let stale = Record {
        boots: 99,
        ..v.record.clone()
    };
    let next = s.put(&v.record, Some(v.version)).unwrap();
    assert_ne!(next, v.version, "every write moves the version");
    assert!(matches!(
        s.put(&stale, Some(v.version)),
        Err(StoreError::Conflict)
    ));
    assert!(matches!(s.put(&stale, None), Err(StoreError::Conflict)));
    assert_eq!(s.get(A).unwrap().unwrap().record.boots, 1);
    // A record that does not exist yet is only created from "no record".
    assert!(matches!(
        s.put(
            &Record {
                mac: B,
                ..Default::default()
            },
            Some(7)
        ),
        Err(StoreError::Conflict)
    ));
    s.forget(A).unwrap();
}

fn changes_by_another_handle_are_seen(open: &dyn Fn() -> Box<dyn MachineStore>) {
    let (s, other) = (open(), open());
    update(&*s, A, &booted(100)).unwrap();
    update(&*s, A, &Change::Installed { at: 150 }).unwrap();
    assert_eq!(
        other.get(A).unwrap().unwrap().record.installed_at,
        Some(150)
    );
    update(&*other, A, &Change::Reinstall).unwrap();
    other.publish().unwrap();
    // A store others write through a watch takes it in soon, not at once: within 2 s.
    let r = eventually(std::time::Duration::from_secs(2), || {
        s.refresh();
        s.cached(A)
            .map(|v| v.record)
            .filter(|r| r.installed_at.is_none())
    });
    assert_eq!(
        (r.first_seen, r.last_seen, r.boots, r.installed_at),
        (100, 150, 1, None)
    );
    // A change starts from the store, not from an older copy.
    update(&*s, A, &booted(200)).unwrap();
    let again = open().get(A).unwrap().unwrap().record;
    assert_eq!(
        (again.boots, again.installed_at, again.arch),
        (2, None, Some(CpuArch::Amd64))
    );
    let mut seen = 0;
    open().with(&mut |all| seen = all.len());
    assert_eq!(seen, 1);
    // A forget by another handle is taken in too.
    other.forget(A).unwrap();
    other.publish().unwrap();
    eventually(std::time::Duration::from_secs(2), || {
        s.refresh();
        s.cached(A).is_none().then_some(())
    });
    update(&*s, A, &booted(300)).unwrap();
    s.forget(A).unwrap();
}

fn racing_writers_lose_nothing(open: &dyn Fn() -> Box<dyn MachineStore>) {
    let handles: Vec<Arc<dyn MachineStore>> = (0..4).map(|_| Arc::from(open())).collect();
    std::thread::scope(|scope| {
        for h in &handles {
            scope.spawn(move || {
                for i in 0..10 {
                    update(&**h, B, &booted(1000 + i)).unwrap();
                }
            });
        }
    });
    assert_eq!(open().get(B).unwrap().unwrap().record.boots, 40);
    handles[0].forget(B).unwrap();
}

fn forget_and_reinstall(open: &dyn Fn() -> Box<dyn MachineStore>) {
    let s = open();
    // A reinstall of a machine never seen creates nothing.
    assert_eq!(update(&*s, A, &Change::Reinstall).unwrap(), None);
    assert!(s.get(A).unwrap().is_none());
    update(&*s, A, &booted(5)).unwrap();
    assert!(s.forget(A).unwrap());
    assert!(!open().forget(A).unwrap());
    assert!(s.get(A).unwrap().is_none() && s.cached(A).is_none());
    assert_eq!(s.len(), 0);
}
