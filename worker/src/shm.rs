//! Shared memory between the ranks of one node: one file in /dev/shm that
//! every local rank maps, a barrier in its header, and two sets of slots
//! (one per local rank) that the hierarchical collective stages data in.
//!
//! Local rank 0 creates the file under a fresh random name, reserves its
//! pages (posix_fallocate: a full /dev/shm is an error here, not a SIGBUS
//! later) and publishes the name through the round's key-value store; the
//! others map it and write their pid. Once all are there the file is
//! unlinked: the mapping lives on, and nothing is left in /dev/shm however
//! the processes end. A peer that dies is seen by its pid while the others
//! wait at the barrier; a peer that hangs, by the collective's timeout.

use crate::collective::CollectiveError;
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_be_bytes(*b"RMSHM001");
const OFF_MAGIC: usize = 0;
const OFF_SIZE: usize = 8;
const OFF_SLOT: usize = 16;
const OFF_COUNT: usize = 64;
const OFF_GEN: usize = 128;
const OFF_PIDS: usize = 192;
/// How often a waiting rank checks that the ranks it waits for still live.
const LIVENESS_EVERY: Duration = Duration::from_millis(50);
/// Polls of the generation word before a waiting rank sleeps.
const SPINS: u32 = 2000;

/// Where the segment goes: /dev/shm (memory) where there is one.
pub fn default_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn header_len(size: usize) -> usize {
    (OFF_PIDS + 4 * size).div_ceil(4096) * 4096
}

/// The bytes a node's segment needs: the header and 2 x `size` slots.
pub fn segment_bytes(size: usize, slot_bytes: usize) -> usize {
    header_len(size) + 2 * size * slot_bytes
}

/// One node's shared segment, as one of its ranks sees it.
pub struct NodeGroup {
    map: MmapMut,
    /// This rank's index among the node's ranks.
    me: usize,
    size: usize,
    slot_bytes: usize,
    data: usize,
    /// The creator unlinks the file once everyone has mapped it (or when
    /// it is dropped first).
    unlink: Option<PathBuf>,
    timeout: Duration,
    /// Local index -> global rank, for errors.
    global_base: usize,
}

fn shm_err(op: &'static str, detail: String) -> CollectiveError {
    CollectiveError::Shm { op, detail }
}

impl NodeGroup {
    /// Local rank 0: a new segment for `size` ranks with slots of
    /// `slot_bytes`, under a random name in `dir`. Returns it and its path
    /// (for the others).
    pub fn create(
        dir: &Path,
        size: usize,
        slot_bytes: usize,
        timeout: Duration,
        global_base: usize,
    ) -> Result<(NodeGroup, PathBuf), CollectiveError> {
        let path = dir.join(format!(
            "ringmaster-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let len = segment_bytes(size, slot_bytes);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| shm_err("setup", format!("cannot create {}: {e}", path.display())))?;
        let fail = |detail: String| {
            let _ = std::fs::remove_file(&path);
            shm_err("setup", detail)
        };
        // Reserve the pages now: writing to a mapping of a file whose pages
        // the filesystem cannot supply is a SIGBUS.
        nix::fcntl::posix_fallocate(&file, 0, len as i64).map_err(|e| {
            fail(format!(
                "cannot reserve {len} bytes in {} ({e}); give the node more shared memory (a Kubernetes pod: an emptyDir with medium Memory on /dev/shm) or set collective.shared_memory to false",
                dir.display()
            ))
        })?;
        let map = map(&file).map_err(|e| fail(format!("cannot map {}: {e}", path.display())))?;
        let mut g = NodeGroup::over(map, 0, size, slot_bytes, timeout, global_base);
        g.unlink = Some(path.clone());
        g.map[OFF_SIZE..OFF_SIZE + 8].copy_from_slice(&(size as u64).to_le_bytes());
        g.map[OFF_SLOT..OFF_SLOT + 8].copy_from_slice(&(slot_bytes as u64).to_le_bytes());
        g.pid(0).store(std::process::id(), Ordering::Release);
        g.map[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        Ok((g, path))
    }

    /// Local rank `me` maps the segment local rank 0 made.
    pub fn attach(
        path: &Path,
        me: usize,
        size: usize,
        slot_bytes: usize,
        timeout: Duration,
        global_base: usize,
    ) -> Result<NodeGroup, CollectiveError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| shm_err("setup", format!("cannot open {}: {e}", path.display())))?;
        let map = map(&file)
            .map_err(|e| shm_err("setup", format!("cannot map {}: {e}", path.display())))?;
        let word = |off: usize| u64::from_le_bytes(map[off..off + 8].try_into().expect("8 bytes"));
        if map.len() != segment_bytes(size, slot_bytes)
            || word(OFF_MAGIC) != MAGIC
            || word(OFF_SIZE) != size as u64
            || word(OFF_SLOT) != slot_bytes as u64
        {
            return Err(shm_err(
                "setup",
                format!("{} is not this node's segment", path.display()),
            ));
        }
        let g = NodeGroup::over(map, me, size, slot_bytes, timeout, global_base);
        g.pid(me).store(std::process::id(), Ordering::Release);
        Ok(g)
    }

    /// Local rank `me`'s view of a mapped segment.
    fn over(
        map: MmapMut,
        me: usize,
        size: usize,
        slot_bytes: usize,
        timeout: Duration,
        global_base: usize,
    ) -> NodeGroup {
        NodeGroup {
            map,
            me,
            size,
            slot_bytes,
            data: header_len(size),
            unlink: None,
            timeout,
            global_base,
        }
    }

    /// Wait until every rank has mapped the segment, then (creator) remove
    /// its name.
    pub fn attached(&mut self) -> Result<(), CollectiveError> {
        self.barrier("setup")?;
        if let Some(p) = self.unlink.take() {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn atomic(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.data);
        // SAFETY: the mapping is page-aligned and lives as long as `self`;
        // `off` is 4-aligned inside the header, which is only ever accessed
        // through atomics once the segment is shared.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    fn pid(&self, i: usize) -> &AtomicU32 {
        self.atomic(OFF_PIDS + 4 * i)
    }

    /// Every rank of the node waits here until all have arrived (a
    /// sense-reversing counter). A waiting rank spins briefly, then sleeps
    /// on a futex on the generation word (ranks may outnumber cores: a
    /// spinning waiter would take the core a working rank needs), which
    /// the last to arrive wakes. It ends with an error when a rank of the
    /// node has died or `timeout` passes.
    pub fn barrier(&self, op: &'static str) -> Result<(), CollectiveError> {
        let count = self.atomic(OFF_COUNT);
        let gen = self.atomic(OFF_GEN);
        let g = gen.load(Ordering::Acquire);
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.size as u32 {
            count.store(0, Ordering::Relaxed);
            gen.store(g.wrapping_add(1), Ordering::Release);
            futex_wake_all(gen);
            return Ok(());
        }
        for _ in 0..SPINS {
            if gen.load(Ordering::Acquire) != g {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let start = Instant::now();
        while gen.load(Ordering::Acquire) == g {
            futex_wait(gen, g, LIVENESS_EVERY);
            if gen.load(Ordering::Acquire) != g {
                break;
            }
            if let Some(dead) = self.dead_peer() {
                return Err(CollectiveError::PeerClosed {
                    peer: self.global_base + dead,
                    op,
                });
            }
            if start.elapsed() > self.timeout {
                return Err(shm_err(
                    op,
                    format!(
                        "the {} ranks of this node did not all reach the barrier within {:?}",
                        self.size, self.timeout
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A local rank whose process is gone (its pid known and no longer
    /// there).
    fn dead_peer(&self) -> Option<usize> {
        (0..self.size).filter(|i| *i != self.me).find(|i| {
            let pid = self.pid(*i).load(Ordering::Acquire);
            pid != 0
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                    == Err(nix::errno::Errno::ESRCH)
        })
    }

    fn slot_ptr(&self, set: usize, slot: usize) -> *mut u8 {
        assert!(set < 2 && slot < self.size);
        // SAFETY: in bounds of the mapping (segment_bytes).
        unsafe {
            (self.map.as_ptr() as *mut u8)
                .add(self.data + (set * self.size + slot) * self.slot_bytes)
        }
    }

    /// Elements of type T a slot holds.
    pub fn slot_len<T>(&self) -> usize {
        self.slot_bytes / std::mem::size_of::<T>()
    }

    /// Copy `src` into slot `slot` of set `set` at element `at`. The caller
    /// keeps the protocol: no other rank reads these elements until the
    /// next barrier.
    pub fn put<T: bytemuck::Pod>(&self, set: usize, slot: usize, at: usize, src: &[T]) {
        assert!((at + src.len()) * std::mem::size_of::<T>() <= self.slot_bytes);
        // SAFETY: bounds checked above; the slot is 8-byte aligned (the
        // header and slot sizes are multiples of 8); by the protocol no
        // rank reads or writes these bytes concurrently.
        unsafe {
            let dst = (self.slot_ptr(set, slot) as *mut T).add(at);
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        }
    }

    /// Elements `range` of slot `slot` of set `set`. The caller keeps the
    /// protocol: no rank writes them while the slice lives.
    pub fn get<T: bytemuck::Pod>(
        &self,
        set: usize,
        slot: usize,
        range: std::ops::Range<usize>,
    ) -> &[T] {
        assert!(
            range.end * std::mem::size_of::<T>() <= self.slot_bytes && range.start <= range.end
        );
        // SAFETY: as in `put`; the bytes are plain old data.
        unsafe {
            let p = (self.slot_ptr(set, slot) as *const T).add(range.start);
            std::slice::from_raw_parts(p, range.len())
        }
    }
}

impl Drop for NodeGroup {
    fn drop(&mut self) {
        if let Some(p) = self.unlink.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Sleep while `word` holds `expected` (or until `max` passes or a wake).
/// A shared (not process-private) futex: the word lies in a mapping other
/// processes share.
fn futex_wait(word: &AtomicU32, expected: u32, max: Duration) {
    let ts = libc::timespec {
        tv_sec: max.as_secs() as libc::time_t,
        tv_nsec: max.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT reads the aligned u32 behind `word`, which lives
    // as long as the mapping; EAGAIN (the word changed), EINTR and
    // ETIMEDOUT all send the caller back to look at the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wake every rank sleeping on `word`.
fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE only reads the address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

fn map(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the file is private to this node's ranks (a random name,
    // mode 0600, unlinked once all have it); what they write to it follows
    // the barrier protocol above.
    unsafe { MmapMut::map_mut(file) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes() {
        assert_eq!(header_len(1), 4096);
        assert_eq!(header_len(8), 4096);
        assert_eq!(header_len(1000), 8192);
        assert_eq!(segment_bytes(4, 1 << 20), 4096 + 8 * (1 << 20));
    }

    /// Fifty rounds: rank `me` puts me*1000+round in its slot, and after
    /// the barrier reads everyone's.
    fn exchange(g: &NodeGroup, me: usize, size: usize) {
        for round in 0..50u32 {
            let set = round as usize % 2;
            g.put(set, me, 0, &[me as u32 * 1000 + round]);
            g.barrier("test").unwrap();
            for j in 0..size {
                assert_eq!(g.get::<u32>(set, j, 0..1)[0], j as u32 * 1000 + round);
            }
            g.barrier("test").unwrap();
        }
    }

    #[test]
    fn threads_share_a_segment_through_its_barrier() {
        // Four "ranks" as threads of one process.
        let dir = std::env::temp_dir();
        let t = Duration::from_secs(10);
        let (mut g0, path) = NodeGroup::create(&dir, 4, 4096, t, 0).unwrap();
        let handles: Vec<_> = (1..4)
            .map(|me| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut g = NodeGroup::attach(&path, me, 4, 4096, t, 0).unwrap();
                    g.attached().unwrap();
                    exchange(&g, me, 4);
                })
            })
            .collect();
        g0.attached().unwrap();
        assert!(
            !path.exists(),
            "the name is removed once all have mapped it"
        );
        exchange(&g0, 0, 4);
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_missing_rank_times_out_and_a_dead_one_is_named() {
        let dir = std::env::temp_dir();
        let (g0, path) = NodeGroup::create(&dir, 2, 4096, Duration::from_millis(300), 10).unwrap();
        // Nobody else comes: a timeout, with the node's size in the message.
        let e = g0.barrier("test").unwrap_err().to_string();
        assert!(e.contains("2 ranks of this node"), "{e}");
        drop(g0);
        assert!(!path.exists(), "the creator removes the file when dropped");
        // A peer whose pid is gone is named by its global rank.
        let (g0, _) = NodeGroup::create(&dir, 2, 4096, Duration::from_secs(30), 10).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        g0.pid(1).store(pid, Ordering::Release);
        let e = g0.barrier("test").unwrap_err();
        assert!(
            matches!(e, CollectiveError::PeerClosed { peer: 11, .. }),
            "{e:?}"
        );
    }
}
