//! A squashfs 4.0 writer that uses every core and streams.
//!
//! File data arrives once, in the order the source has it (tar entries of layer after layer), and
//! is cut into blocks that a pool of threads compresses while the caller goes on reading. A single
//! writer thread puts the compressed blocks into the file in the order they were handed in, so a
//! file's blocks are contiguous, as the format wants, without ever holding more than a few blocks
//! in memory. Files smaller than a block are packed together into fragment blocks, as
//! `mksquashfs` does by default. All-zero blocks are stored as holes.
//!
//! Only once all data is down does [`Writer::finish`] get the final [`Tree`] (for an OCI image:
//! after the whiteouts and overwrites of later layers) and write the inode, directory, fragment
//! and id tables behind the data, then the superblock in front. The file is valid for the Linux
//! kernel and for `unsquashfs`; data of files that the tree no longer names stays unreferenced.
//!
//! ```no_run
//! use squashfs::{Compression, Kind, Meta, Tree, Writer};
//!
//! let mut w = Writer::new(std::fs::File::create("out.squashfs")?, Compression::Gzip, 1 << 20, 2)?;
//! let mut tree = Tree::new();
//! let data = b"hello\n";
//! let file = w.add_file(&mut &data[..], data.len() as u64).map_err(std::io::Error::from)?;
//! let meta = Meta { mode: 0o644, ..Meta::default() };
//! tree.add(Tree::ROOT, b"hello.txt", meta, Kind::File(file));
//! let (summary, image) = w.finish(&tree)?;
//! image.into_file().sync_all()?;
//! # let _ = summary;
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(unreachable_pub)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

mod tree;
pub use tree::{Inode, Kind, Meta, Tree, Xattrs};

/// Where a file's data went in the image being written: a run of consecutive blocks and/or a
/// piece of a fragment block. [`Writer::add_file`] hands it out; the tree keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileData {
    pub size: u64,
    first_unit: u64,
    blocks: u32,
    fragment: Option<(u32, u32)>,
}

/// Why [`Writer::add_file`] failed: the source could not be read, or the image not written.
#[derive(Debug)]
pub enum AddError {
    Read(io::Error),
    Write(io::Error),
}

impl From<AddError> for io::Error {
    fn from(e: AddError) -> io::Error {
        match e {
            AddError::Read(e) | AddError::Write(e) => e,
        }
    }
}

const MAGIC: u32 = 0x7371_7368;
const SUPERBLOCK_LEN: u64 = 96;
const METADATA_SIZE: usize = 8192;
/// Bit 24 of a data block size: the block is stored uncompressed.
const DATA_UNCOMPRESSED: u32 = 1 << 24;
const METADATA_UNCOMPRESSED: u16 = 0x8000;
const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_TABLE: u64 = u64::MAX;
const FLAG_NO_XATTRS: u16 = 0x0200;
const NO_XATTR: u32 = 0xFFFF_FFFF;

/// The xattr namespaces squashfs stores, by type number.
const XATTR_PREFIXES: [(&[u8], u16); 3] = [(b"user.", 0), (b"trusted.", 1), (b"security.", 2)];

/// Whether squashfs can hold an attribute of this name.
pub fn xattr_supported(name: &[u8]) -> bool {
    XATTR_PREFIXES
        .iter()
        .any(|(p, _)| name.len() > p.len() && name.starts_with(p))
}

/// The compressor of every data and metadata block, with `mksquashfs`'s default levels (gzip 9,
/// zstd 15, xz preset 6 with a dictionary the size of a block, as the kernel requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }

    fn id(self) -> u16 {
        match self {
            Compression::Gzip => 1,
            Compression::Xz => 4,
            Compression::Zstd => 6,
        }
    }

    fn compress(self, data: &[u8], block_size: u32) -> io::Result<Vec<u8>> {
        match self {
            Compression::Gzip => {
                let mut e = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::new(9),
                );
                e.write_all(data)?;
                e.finish()
            }
            Compression::Zstd => zstd::bulk::compress(data, 15),
            Compression::Xz => {
                let mut opts = xz2::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
                opts.dict_size(block_size.max(METADATA_SIZE as u32));
                let mut filters = xz2::stream::Filters::new();
                filters.lzma2(&opts);
                let stream =
                    xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32)
                        .map_err(io::Error::other)?;
                let mut e =
                    xz2::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 2), stream);
                e.write_all(data)?;
                e.finish()
            }
        }
    }

    /// Decompresses one block of at most `max` bytes.
    pub fn decompress(self, data: &[u8], max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(max);
        match self {
            Compression::Gzip => {
                flate2::read::ZlibDecoder::new(data)
                    .take(max as u64 + 1)
                    .read_to_end(&mut out)?;
            }
            Compression::Zstd => out = zstd::bulk::decompress(data, max)?,
            Compression::Xz => {
                xz2::read::XzDecoder::new(data)
                    .take(max as u64 + 1)
                    .read_to_end(&mut out)?;
            }
        }
        if out.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "squashfs block decompresses past its size",
            ));
        }
        Ok(out)
    }
}

/// A compression name other than `gzip`, `zstd` and `xz`.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {0:?}: use gzip, zstd or xz")]
pub struct UnknownCompression(pub String);

impl std::str::FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            _ => Err(UnknownCompression(s.to_string())),
        }
    }
}

enum Job {
    Block { unit: u64, data: Vec<u8> },
    Fragment { unit: u64, data: Vec<u8> },
}

struct Done {
    unit: u64,
    bytes: Vec<u8>,
    size_field: u32,
}

/// Where each unit (data block or fragment block) landed: offset in the file and the size field
/// the format stores for it.
#[derive(Clone, Copy, Debug, Default)]
struct Loc {
    pos: u64,
    size_field: u32,
}

type WriterResult = io::Result<(BufWriter<File>, Vec<Loc>, u64)>;

pub struct Writer {
    comp: Compression,
    block_size: u32,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<WriterResult>>,
    next_unit: u64,
    fragment: Vec<u8>,
    /// Unit number of each fragment block, by fragment index.
    fragment_units: Vec<u64>,
}

/// What [`Writer::finish`] reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub bytes: u64,
    pub inodes: u32,
}

/// A finished image's data layout, to read files back (the kernel and initrd come out this way).
pub struct Image {
    file: File,
    comp: Compression,
    block_size: u32,
    locs: Vec<Loc>,
    fragment_units: Vec<u64>,
}

impl Writer {
    /// Starts an image in `file` (truncated) with `threads` compressing threads.
    pub fn new(
        mut file: File,
        comp: Compression,
        block_size: u32,
        threads: usize,
    ) -> io::Result<Writer> {
        assert!(block_size.is_power_of_two() && (4096..=1 << 20).contains(&block_size));
        file.set_len(0)?;
        file.seek(SeekFrom::Start(SUPERBLOCK_LEN))?;
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|i| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("squashfs-{i}"))
                    .spawn(move || compress_worker(rx, tx, comp, block_size))
                    .expect("spawn compression thread")
            })
            .collect();
        drop(done_tx);
        let out = BufWriter::with_capacity(1 << 20, file);
        let writer = std::thread::Builder::new()
            .name("squashfs-write".into())
            .spawn(move || write_units(done_rx, out))
            .expect("spawn writer thread");
        Ok(Writer {
            comp,
            block_size,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
            next_unit: 0,
            fragment: Vec::new(),
            fragment_units: Vec::new(),
        })
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let ok = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if ok {
            Ok(())
        } else {
            // A worker or the writer stopped: the writer's error says why.
            Err(self.stop().err().unwrap_or_else(|| {
                io::Error::other("squashfs compression threads stopped unexpectedly")
            }))
        }
    }

    fn flush_fragment(&mut self) -> io::Result<()> {
        if self.fragment.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(
            &mut self.fragment,
            Vec::with_capacity(self.block_size as usize),
        );
        let unit = self.next_unit;
        self.next_unit += 1;
        self.fragment_units.push(unit);
        self.send(Job::Fragment { unit, data })
    }

    /// Waits for every queued block to be written; returns the file and the layout.
    fn stop(&mut self) -> io::Result<(BufWriter<File>, Vec<Loc>, u64)> {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take() {
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("squashfs writer thread panicked"))),
            None => Err(io::Error::other("squashfs writer already stopped")),
        }
    }

    /// Writes the tables for `tree` and the superblock; the image is complete (not yet fsynced).
    pub fn finish(mut self, tree: &Tree) -> io::Result<(Summary, Image)> {
        self.flush_fragment()?;
        let (mut out, locs, data_end) = self.stop()?;
        let mut t = Tables::new(self.comp, tree);
        let root = t.write_tree(tree, &locs, self.block_size)?;
        let fragments: Vec<u8> = self
            .fragment_units
            .iter()
            .flat_map(|&u| {
                let l = locs[u as usize];
                let mut e = [0u8; 16];
                e[..8].copy_from_slice(&l.pos.to_le_bytes());
                e[8..12].copy_from_slice(&l.size_field.to_le_bytes());
                e
            })
            .collect();
        let ids: Vec<u8> = t.ids.iter().flat_map(|id| id.to_le_bytes()).collect();

        let inode_table_start = data_end;
        let inode_table = std::mem::take(&mut t.inodes).finish()?;
        let directory_table_start = inode_table_start + inode_table.len() as u64;
        let dir_table = std::mem::take(&mut t.dirs).finish()?;
        let mut pos = directory_table_start + dir_table.len() as u64;
        out.write_all(&inode_table)?;
        out.write_all(&dir_table)?;
        let fragment_table_start =
            write_lookup_table(&mut out, &mut pos, &fragments, &[], self.comp)?;
        let id_table_start = write_lookup_table(&mut out, &mut pos, &ids, &[], self.comp)?;
        let mut flags = FLAG_NO_XATTRS;
        let mut xattr_id_table_start = NO_TABLE;
        if !t.xattr_ids.is_empty() {
            // Key/value blocks, then the id entries, then the header the superblock points at.
            flags = 0;
            let xattr_table_start = pos;
            let kv = std::mem::take(&mut t.xattr_kv).finish()?;
            out.write_all(&kv)?;
            pos += kv.len() as u64;
            let mut header = Vec::new();
            header.extend_from_slice(&xattr_table_start.to_le_bytes());
            header.extend_from_slice(&((t.xattr_ids.len() / 16) as u32).to_le_bytes());
            header.extend_from_slice(&0u32.to_le_bytes());
            xattr_id_table_start =
                write_lookup_table(&mut out, &mut pos, &t.xattr_ids, &header, self.comp)?;
        }
        let bytes_used = pos;
        let padded = bytes_used.div_ceil(4096) * 4096;
        out.write_all(&vec![0u8; (padded - bytes_used) as usize])?;

        let mut sb = Vec::with_capacity(SUPERBLOCK_LEN as usize);
        sb.extend_from_slice(&MAGIC.to_le_bytes());
        sb.extend_from_slice(&t.count.to_le_bytes());
        sb.extend_from_slice(&t.max_mtime.to_le_bytes());
        sb.extend_from_slice(&self.block_size.to_le_bytes());
        sb.extend_from_slice(&(self.fragment_units.len() as u32).to_le_bytes());
        sb.extend_from_slice(&self.comp.id().to_le_bytes());
        sb.extend_from_slice(&(self.block_size.trailing_zeros() as u16).to_le_bytes());
        sb.extend_from_slice(&flags.to_le_bytes());
        sb.extend_from_slice(&(t.ids.len() as u16).to_le_bytes());
        sb.extend_from_slice(&4u16.to_le_bytes());
        sb.extend_from_slice(&0u16.to_le_bytes());
        sb.extend_from_slice(&root.to_le_bytes());
        sb.extend_from_slice(&bytes_used.to_le_bytes());
        sb.extend_from_slice(&id_table_start.to_le_bytes());
        sb.extend_from_slice(&xattr_id_table_start.to_le_bytes());
        sb.extend_from_slice(&inode_table_start.to_le_bytes());
        sb.extend_from_slice(&directory_table_start.to_le_bytes());
        sb.extend_from_slice(&fragment_table_start.to_le_bytes());
        sb.extend_from_slice(&NO_TABLE.to_le_bytes());
        debug_assert_eq!(sb.len() as u64, SUPERBLOCK_LEN);
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&sb, 0)?;
        Ok((
            Summary {
                bytes: padded,
                inodes: t.count,
            },
            Image {
                file,
                comp: self.comp,
                block_size: self.block_size,
                locs,
                fragment_units: std::mem::take(&mut self.fragment_units),
            },
        ))
    }
}

impl Writer {
    /// Reads exactly `size` bytes of one file from `r` and queues them for compression.
    pub fn add_file(&mut self, r: &mut dyn Read, size: u64) -> Result<FileData, AddError> {
        let bs = self.block_size as u64;
        let mut fd = FileData {
            size,
            first_unit: self.next_unit,
            blocks: 0,
            fragment: None,
        };
        if size == 0 {
            return Ok(fd);
        }
        if size < bs {
            let mut tail = vec![0u8; size as usize];
            r.read_exact(&mut tail).map_err(AddError::Read)?;
            if self.fragment.len() + tail.len() > self.block_size as usize {
                self.flush_fragment().map_err(AddError::Write)?;
            }
            fd.fragment = Some((self.fragment_units.len() as u32, self.fragment.len() as u32));
            self.fragment.extend_from_slice(&tail);
            return Ok(fd);
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(bs) as usize;
            let mut data = vec![0u8; n];
            r.read_exact(&mut data).map_err(AddError::Read)?;
            let unit = self.next_unit;
            self.next_unit += 1;
            self.send(Job::Block { unit, data })
                .map_err(AddError::Write)?;
            fd.blocks += 1;
            left -= n as u64;
        }
        Ok(fd)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

fn compress_worker(
    jobs: Arc<Mutex<Receiver<Job>>>,
    done: SyncSender<Done>,
    comp: Compression,
    block_size: u32,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let (unit, data, holes) = match job {
            Job::Block { unit, data } => (unit, data, true),
            Job::Fragment { unit, data } => (unit, data, false),
        };
        let d = if holes && data.iter().all(|&b| b == 0) {
            Done {
                unit,
                bytes: Vec::new(),
                size_field: 0,
            }
        } else if incompressible(&data) {
            Done {
                unit,
                size_field: data.len() as u32 | DATA_UNCOMPRESSED,
                bytes: data,
            }
        } else {
            match comp.compress(&data, block_size) {
                Ok(c) if c.len() < data.len() => Done {
                    unit,
                    size_field: c.len() as u32,
                    bytes: c,
                },
                Ok(_) => Done {
                    unit,
                    size_field: data.len() as u32 | DATA_UNCOMPRESSED,
                    bytes: data,
                },
                // Compressing into memory fails only on allocation; store the block as is.
                Err(_) => Done {
                    unit,
                    size_field: data.len() as u32 | DATA_UNCOMPRESSED,
                    bytes: data,
                },
            }
        };
        if done.send(d).is_err() {
            return;
        }
    }
}

/// Whether a block is already compressed (firmware, modules, media) or random: its bytes are
/// spread so evenly (entropy within 0.01 bit of 8 per byte over at least 256 KiB) that deflate,
/// zstd and xz gain nothing measurable, while deflate at level 9 spends the most time on exactly
/// such data. Such blocks are stored as they are, which is what compressing would end with too.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 256 << 10 {
        return false;
    }
    let mut hist = [0u32; 256];
    for &b in data {
        hist[b as usize] += 1;
    }
    let n = data.len() as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.99
}

/// Writes units in order as they come back from the workers, whatever order they finish in.
fn write_units(done: Receiver<Done>, mut out: BufWriter<File>) -> WriterResult {
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut locs: Vec<Loc> = Vec::new();
    let mut pos = SUPERBLOCK_LEN;
    for d in done {
        pending.insert(d.unit, d);
        while let Some(d) = pending.remove(&(locs.len() as u64)) {
            out.write_all(&d.bytes)?;
            locs.push(Loc {
                pos,
                size_field: d.size_field,
            });
            pos += d.bytes.len() as u64;
        }
    }
    if !pending.is_empty() {
        return Err(io::Error::other(
            "squashfs blocks missing after compression",
        ));
    }
    Ok((out, locs, pos))
}

/// Compressed metadata blocks (inode and directory tables) built in memory.
#[derive(Default)]
struct MetaWriter {
    comp: Compression,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl MetaWriter {
    fn new(comp: Compression) -> MetaWriter {
        MetaWriter {
            comp,
            out: Vec::new(),
            buf: Vec::with_capacity(METADATA_SIZE * 2),
        }
    }

    /// The reference of the next byte: start of its block in the table, offset in the block.
    fn pos(&self) -> (u64, u16) {
        (self.out.len() as u64, self.buf.len() as u16)
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(b);
        while self.buf.len() >= METADATA_SIZE {
            self.flush_block(METADATA_SIZE)?;
        }
        Ok(())
    }

    fn flush_block(&mut self, n: usize) -> io::Result<()> {
        let chunk = &self.buf[..n];
        let c = self.comp.compress(chunk, METADATA_SIZE as u32)?;
        if c.len() < n {
            self.out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&c);
        } else {
            self.out
                .extend_from_slice(&(n as u16 | METADATA_UNCOMPRESSED).to_le_bytes());
            self.out.extend_from_slice(chunk);
        }
        self.buf.drain(..n);
        Ok(())
    }

    fn finish(mut self) -> io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            let n = self.buf.len();
            self.flush_block(n)?;
        }
        Ok(self.out)
    }
}

/// Writes `entries` as metadata blocks, then `header` and the array of the blocks' positions;
/// returns where the header starts (what the superblock points at).
fn write_lookup_table(
    out: &mut impl Write,
    pos: &mut u64,
    entries: &[u8],
    header: &[u8],
    comp: Compression,
) -> io::Result<u64> {
    let mut index = Vec::new();
    for chunk in entries.chunks(METADATA_SIZE) {
        let mut m = MetaWriter::new(comp);
        m.write(chunk)?;
        let block = m.finish()?;
        index.extend_from_slice(&pos.to_le_bytes());
        out.write_all(&block)?;
        *pos += block.len() as u64;
    }
    let start = *pos;
    out.write_all(header)?;
    out.write_all(&index)?;
    *pos += (header.len() + index.len()) as u64;
    Ok(start)
}

/// Basic inode types; directory entries always carry these, even for extended inodes.
fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => 1,
        Kind::File(_) => 2,
        Kind::Symlink(_) => 3,
        Kind::Block(_) => 4,
        Kind::Char(_) => 5,
        Kind::Fifo => 6,
        Kind::Socket => 7,
    }
}

/// Linux's `new_encode_dev`, which squashfs stores.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

struct Tables {
    inodes: MetaWriter,
    dirs: MetaWriter,
    ids: Vec<u32>,
    id_index: HashMap<u32, u16>,
    /// Inode number of each tree inode (0: unreachable).
    numbers: Vec<u32>,
    nlinks: Vec<u32>,
    refs: Vec<Option<(u64, u16)>>,
    count: u32,
    max_mtime: u32,
    /// Key/value pairs of each distinct attribute set, and the 16-byte id entries pointing at
    /// them (what inodes index).
    xattr_kv: MetaWriter,
    xattr_ids: Vec<u8>,
    xattr_sets: HashMap<Xattrs, u32>,
}

/// A written child of a directory: name, inode reference, inode number, basic type.
type Entry<'t> = (&'t [u8], (u64, u16), u32, u16);

impl Tables {
    /// Numbers reachable inodes breadth first, so the entries of one directory have consecutive
    /// numbers (directory headers store them as 16-bit offsets from a base).
    fn new(comp: Compression, tree: &Tree) -> Tables {
        let n = tree.inodes.len();
        let mut numbers = vec![0u32; n];
        let mut nlinks = vec![0u32; n];
        let mut count = 1;
        numbers[Tree::ROOT] = 1;
        let mut queue = VecDeque::from([Tree::ROOT]);
        while let Some(d) = queue.pop_front() {
            let Kind::Dir(children) = &tree.inodes[d].kind else {
                continue;
            };
            let mut subdirs = 0;
            for &c in children.values() {
                nlinks[c] += 1;
                if numbers[c] == 0 {
                    count += 1;
                    numbers[c] = count;
                    if matches!(tree.inodes[c].kind, Kind::Dir(_)) {
                        queue.push_back(c);
                    }
                }
                if matches!(tree.inodes[c].kind, Kind::Dir(_)) {
                    subdirs += 1;
                }
            }
            nlinks[d] = 2 + subdirs;
        }
        Tables {
            inodes: MetaWriter::new(comp),
            dirs: MetaWriter::new(comp),
            ids: Vec::new(),
            id_index: HashMap::new(),
            numbers,
            nlinks,
            refs: vec![None; n],
            count,
            max_mtime: 0,
            xattr_kv: MetaWriter::new(comp),
            xattr_ids: Vec::new(),
            xattr_sets: HashMap::new(),
        }
    }

    /// The xattr index of an inode's attributes (written once per distinct set), or NO_XATTR.
    fn xattr(&mut self, tree: &Tree, id: usize) -> io::Result<u32> {
        let set = &tree.inodes[id].xattrs;
        if set.is_empty() {
            return Ok(NO_XATTR);
        }
        if let Some(&i) = self.xattr_sets.get(set) {
            return Ok(i);
        }
        let (block, offset) = self.xattr_kv.pos();
        let mut size = 0u32;
        let mut count = 0u32;
        for (name, value) in set {
            let Some((prefix, ty)) = XATTR_PREFIXES.iter().find(|(p, _)| name.starts_with(p))
            else {
                continue;
            };
            let short = &name[prefix.len()..];
            let mut kv = Vec::with_capacity(8 + short.len() + value.len());
            kv.extend_from_slice(&ty.to_le_bytes());
            kv.extend_from_slice(&(short.len() as u16).to_le_bytes());
            kv.extend_from_slice(short);
            kv.extend_from_slice(&(value.len() as u32).to_le_bytes());
            kv.extend_from_slice(value);
            self.xattr_kv.write(&kv)?;
            size += kv.len() as u32;
            count += 1;
        }
        let i = (self.xattr_ids.len() / 16) as u32;
        self.xattr_ids
            .extend_from_slice(&(block << 16 | offset as u64).to_le_bytes());
        self.xattr_ids.extend_from_slice(&count.to_le_bytes());
        self.xattr_ids.extend_from_slice(&size.to_le_bytes());
        self.xattr_sets.insert(set.clone(), i);
        Ok(i)
    }

    fn id(&mut self, id: u32) -> io::Result<u16> {
        if let Some(&i) = self.id_index.get(&id) {
            return Ok(i);
        }
        let i = u16::try_from(self.ids.len()).map_err(|_| {
            io::Error::other("more than 65536 distinct owner ids; squashfs cannot hold them")
        })?;
        self.ids.push(id);
        self.id_index.insert(id, i);
        Ok(i)
    }

    /// Writes every inode and directory listing, children before their directory (whose inode
    /// points at them), with an explicit stack: image data never drives recursion.
    fn write_tree<'t>(&mut self, tree: &'t Tree, locs: &[Loc], block_size: u32) -> io::Result<u64> {
        struct Frame<'t> {
            id: usize,
            name: &'t [u8],
            parent: u32,
            children: Vec<(&'t Vec<u8>, usize)>,
            next: usize,
            entries: Vec<Entry<'t>>,
        }
        let frame = |id: usize, name: &'t [u8], parent: u32| -> Frame<'t> {
            let Kind::Dir(children) = &tree.inodes[id].kind else {
                unreachable!("a frame is a directory")
            };
            Frame {
                id,
                name,
                parent,
                children: children.iter().map(|(n, &c)| (n, c)).collect(),
                next: 0,
                entries: Vec::new(),
            }
        };
        let mut stack = vec![frame(Tree::ROOT, b"", self.count + 1)];
        loop {
            let top = stack
                .last_mut()
                .expect("the root frame stays until the end");
            if let Some(&(name, c)) = top.children.get(top.next) {
                top.next += 1;
                if matches!(tree.inodes[c].kind, Kind::Dir(_)) {
                    let parent = self.numbers[top.id];
                    stack.push(frame(c, name, parent));
                } else {
                    let r = self.write_leaf(tree, c, locs, block_size)?;
                    top.entries
                        .push((name, r, self.numbers[c], basic_type(&tree.inodes[c].kind)));
                }
                continue;
            }
            let done = stack.pop().expect("just looked at it");
            let r = self.write_dir(tree, done.id, done.parent, &done.entries)?;
            match stack.last_mut() {
                Some(up) => up.entries.push((done.name, r, self.numbers[done.id], 1)),
                None => return Ok(r.0 << 16 | r.1 as u64),
            }
        }
    }

    fn header(&mut self, tree: &Tree, id: usize, ty: u16) -> io::Result<(u64, u16)> {
        let ino = &tree.inodes[id];
        let uid = self.id(ino.meta.uid)?;
        let gid = self.id(ino.meta.gid)?;
        self.max_mtime = self.max_mtime.max(ino.meta.mtime);
        let at = self.inodes.pos();
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&ty.to_le_bytes());
        // Permission bits only, as mksquashfs writes them: the type is the inode type, and
        // recent kernels refuse inodes whose mode carries type bits.
        h.extend_from_slice(&((ino.meta.mode & 0o7777) as u16).to_le_bytes());
        h.extend_from_slice(&uid.to_le_bytes());
        h.extend_from_slice(&gid.to_le_bytes());
        h.extend_from_slice(&ino.meta.mtime.to_le_bytes());
        h.extend_from_slice(&self.numbers[id].to_le_bytes());
        self.inodes.write(&h)?;
        Ok(at)
    }

    fn write_leaf(
        &mut self,
        tree: &Tree,
        id: usize,
        locs: &[Loc],
        block_size: u32,
    ) -> io::Result<(u64, u16)> {
        if let Some(r) = self.refs[id] {
            return Ok(r);
        }
        let nlink = self.nlinks[id];
        let mut body = Vec::new();
        let at = match &tree.inodes[id].kind {
            Kind::File(fd) => {
                let units = &locs[fd.first_unit as usize..][..fd.blocks as usize];
                let start = units.first().map_or(0, |l| l.pos);
                let sparse: u64 =
                    units.iter().filter(|l| l.size_field == 0).count() as u64 * block_size as u64;
                let (frag, frag_off) = fd.fragment.unwrap_or((NO_FRAGMENT, 0));
                let xattr = self.xattr(tree, id)?;
                let basic = nlink == 1 && fd.size < 1 << 32 && start < 1 << 32 && xattr == NO_XATTR;
                let at = self.header(tree, id, if basic { 2 } else { 9 })?;
                if basic {
                    body.extend_from_slice(&(start as u32).to_le_bytes());
                    body.extend_from_slice(&frag.to_le_bytes());
                    body.extend_from_slice(&frag_off.to_le_bytes());
                    body.extend_from_slice(&(fd.size as u32).to_le_bytes());
                } else {
                    body.extend_from_slice(&start.to_le_bytes());
                    body.extend_from_slice(&fd.size.to_le_bytes());
                    body.extend_from_slice(&sparse.to_le_bytes());
                    body.extend_from_slice(&nlink.to_le_bytes());
                    body.extend_from_slice(&frag.to_le_bytes());
                    body.extend_from_slice(&frag_off.to_le_bytes());
                    body.extend_from_slice(&xattr.to_le_bytes());
                }
                for u in units {
                    body.extend_from_slice(&u.size_field.to_le_bytes());
                }
                at
            }
            // The others: basic type, or extended (+7) with the xattr index at the end.
            kind => {
                let xattr = self.xattr(tree, id)?;
                let ty = basic_type(kind) + if xattr == NO_XATTR { 0 } else { 7 };
                let at = self.header(tree, id, ty)?;
                body.extend_from_slice(&nlink.to_le_bytes());
                match kind {
                    Kind::Symlink(target) => {
                        body.extend_from_slice(&(target.len() as u32).to_le_bytes());
                        body.extend_from_slice(target);
                    }
                    Kind::Block(dev) | Kind::Char(dev) => {
                        body.extend_from_slice(&encode_dev(dev.0, dev.1).to_le_bytes());
                    }
                    _ => {}
                }
                if xattr != NO_XATTR {
                    body.extend_from_slice(&xattr.to_le_bytes());
                }
                at
            }
        };
        self.inodes.write(&body)?;
        self.refs[id] = Some(at);
        Ok(at)
    }

    /// Writes a directory whose children are written (`entries`, in name order): its listing,
    /// then its inode, which points at the listing.
    fn write_dir(
        &mut self,
        tree: &Tree,
        id: usize,
        parent: u32,
        entries: &[Entry<'_>],
    ) -> io::Result<(u64, u16)> {
        let (dir_block, dir_offset) = self.dirs.pos();
        let mut listing = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let (_, (block, _), base, _) = entries[i];
            let mut n = 0;
            while i + n < entries.len()
                && n < 256
                && entries[i + n].1 .0 == block
                && (entries[i + n].2 as i64 - base as i64).abs() <= i16::MAX as i64
            {
                n += 1;
            }
            listing.extend_from_slice(&(n as u32 - 1).to_le_bytes());
            listing.extend_from_slice(&(block as u32).to_le_bytes());
            listing.extend_from_slice(&base.to_le_bytes());
            for (name, (_, offset), number, ty) in &entries[i..i + n] {
                listing.extend_from_slice(&offset.to_le_bytes());
                listing.extend_from_slice(&((*number as i64 - base as i64) as i16).to_le_bytes());
                listing.extend_from_slice(&ty.to_le_bytes());
                listing.extend_from_slice(&(name.len() as u16 - 1).to_le_bytes());
                listing.extend_from_slice(name);
            }
            i += n;
        }
        self.dirs.write(&listing)?;

        let size = listing.len() as u64 + 3;
        let nlink = self.nlinks[id];
        let xattr = self.xattr(tree, id)?;
        let mut body = Vec::new();
        let at = if size <= u16::MAX as u64 && xattr == NO_XATTR {
            let at = self.header(tree, id, 1)?;
            body.extend_from_slice(&(dir_block as u32).to_le_bytes());
            body.extend_from_slice(&nlink.to_le_bytes());
            body.extend_from_slice(&(size as u16).to_le_bytes());
            body.extend_from_slice(&dir_offset.to_le_bytes());
            body.extend_from_slice(&parent.to_le_bytes());
            at
        } else {
            let at = self.header(tree, id, 8)?;
            body.extend_from_slice(&nlink.to_le_bytes());
            body.extend_from_slice(&(size as u32).to_le_bytes());
            body.extend_from_slice(&(dir_block as u32).to_le_bytes());
            body.extend_from_slice(&parent.to_le_bytes());
            body.extend_from_slice(&0u16.to_le_bytes()); // no directory index
            body.extend_from_slice(&dir_offset.to_le_bytes());
            body.extend_from_slice(&xattr.to_le_bytes());
            at
        };
        self.inodes.write(&body)?;
        Ok(at)
    }
}

impl Image {
    /// Writes the contents of a file of this image to `out`.
    pub fn read_file(&self, fd: &FileData, out: &mut dyn Write) -> io::Result<()> {
        let bs = self.block_size as u64;
        let mut left = fd.size;
        for l in &self.locs[fd.first_unit as usize..][..fd.blocks as usize] {
            let want = left.min(bs) as usize;
            let data = self.unit(*l, want)?;
            if data.len() != want {
                return Err(io::Error::other("squashfs block has the wrong size"));
            }
            out.write_all(&data)?;
            left -= want as u64;
        }
        if let Some((index, offset)) = fd.fragment {
            let l = self.locs[self.fragment_units[index as usize] as usize];
            let data = self.unit(l, self.block_size as usize)?;
            let piece = data
                .get(offset as usize..offset as usize + left as usize)
                .ok_or_else(|| io::Error::other("squashfs fragment is short"))?;
            out.write_all(piece)?;
        }
        Ok(())
    }

    fn unit(&self, l: Loc, want: usize) -> io::Result<Vec<u8>> {
        let len = (l.size_field & !DATA_UNCOMPRESSED) as usize;
        if l.size_field == 0 {
            return Ok(vec![0u8; want]);
        }
        let mut raw = vec![0u8; len];
        self.file.read_exact_at(&mut raw, l.pos)?;
        if l.size_field & DATA_UNCOMPRESSED != 0 {
            Ok(raw)
        } else {
            self.comp.decompress(&raw, self.block_size as usize)
        }
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_data_is_recognised_and_text_is_not() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert!(incompressible(&random));
        let text: Vec<u8> = b"daybreak boots machines over the network. "
            .iter()
            .cycle()
            .take(1 << 20)
            .copied()
            .collect();
        assert!(!incompressible(&text));
        assert!(
            !incompressible(&random[..4096]),
            "small blocks are always compressed"
        );
        // Text made of random words: compressible, though far from repetitive.
        let words = [
            "kernel", "initrd", "squashfs", "boot", "pxe", "tftp", "http", "iso",
        ];
        let prose: Vec<u8> = random
            .iter()
            .flat_map(|b| words[(*b % 8) as usize].bytes().chain([b' ']))
            .take(1 << 20)
            .collect();
        assert!(!incompressible(&prose));
    }
}
