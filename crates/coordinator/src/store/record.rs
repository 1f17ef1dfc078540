//! [`Record`]: a task's stored encoding ([`super::encode_task`]). One allocation, shared: the
//! coordinator's table keeps a task that waits or has finished as this very record
//! (`core::table`), the batch carries it to the writer and the image keeps it for checkpoints,
//! so a queued task costs its encoding once.
//!
//! A coordinator holding millions of queued tasks holds a record per task and two or three
//! pointers to it (the table's slot, the image's hash table). `Arc<[u8]>` is a fat pointer
//! (16 bytes) in each of those places and puts a 16-byte header (two counts) before the bytes.
//! A `Record` is one thin pointer (8 bytes) to an allocation that starts with a 4-byte count
//! and the 4-byte length: at a million tasks that is about 25 MB less, and the pointer in the
//! image's tables and in the table's slots half as large. A record is never changed, only
//! shared and dropped, so it needs no weak count. Its length fits in 32 bits because a task
//! arrives in one frame, whose length on the wire is 32 bits.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

/// What precedes the bytes.
#[repr(C)]
struct Header {
    /// Holders of this allocation.
    refs: AtomicU32,
    /// Bytes after the header.
    len: u32,
}

/// An immutable byte string behind a thin, atomically counted pointer (see the module
/// documentation). Clones share it; the last one dropped frees it.
pub struct Record {
    ptr: NonNull<Header>,
}

// A record's bytes are never written after it is made, and its count is atomic, which is what
// `Arc<[u8]>` relies on to be `Send` and `Sync` too.
#[allow(unsafe_code)]
unsafe impl Send for Record {}
#[allow(unsafe_code)]
unsafe impl Sync for Record {}

/// The allocation for a record of `len` bytes: the header, then the bytes.
fn layout(len: usize) -> Layout {
    Layout::new::<Header>()
        .extend(Layout::array::<u8>(len).expect("a record's length fits a layout"))
        .expect("a record's length fits a layout")
        .0
}

impl Record {
    /// A record holding a copy of `bytes`.
    #[allow(unsafe_code)]
    pub fn new(bytes: &[u8]) -> Record {
        let len = u32::try_from(bytes.len())
            .expect("a record is at most a frame, whose length is 32 bits");
        let layout = layout(bytes.len());
        // SAFETY: the layout is never zero-sized (it holds the header); the header is written
        // before anything reads it, and the bytes go right after it, inside the allocation.
        unsafe {
            let Some(ptr) = NonNull::new(alloc(layout).cast::<Header>()) else {
                handle_alloc_error(layout)
            };
            ptr.write(Header {
                refs: AtomicU32::new(1),
                len,
            });
            let data = ptr.as_ptr().add(1).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data, bytes.len());
            Record { ptr }
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the header lives as long as any holder, and `self` is one.
        #[allow(unsafe_code)]
        unsafe {
            self.ptr.as_ref()
        }
    }

    /// Whether both are the same allocation (not merely equal bytes).
    pub fn ptr_eq(a: &Record, b: &Record) -> bool {
        a.ptr == b.ptr
    }
}

impl Deref for Record {
    type Target = [u8];

    #[allow(unsafe_code)]
    fn deref(&self) -> &[u8] {
        let len = self.header().len as usize;
        // SAFETY: `len` bytes follow the header, written once in `new` and never after.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(1).cast::<u8>(), len) }
    }
}

impl Clone for Record {
    fn clone(&self) -> Record {
        // As `Arc`: a new holder is made from an existing one, so no ordering is needed.
        let before = self.header().refs.fetch_add(1, Ordering::Relaxed);
        // Millions of holders of one record would be a leak loop; stop before the count wraps.
        if before > u32::MAX / 2 {
            std::process::abort();
        }
        Record { ptr: self.ptr }
    }
}

impl Drop for Record {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.header().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other holder's use happens before the free (as `Arc` does it).
        fence(Ordering::Acquire);
        let layout = layout(self.header().len as usize);
        // SAFETY: this was the last holder; the allocation was made with this layout.
        unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), layout) }
    }
}

impl From<&[u8]> for Record {
    fn from(bytes: &[u8]) -> Record {
        Record::new(bytes)
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        **self == **other
    }
}

impl Eq for Record {}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_holds_its_bytes_through_clones_and_drops() {
        for bytes in [&b""[..], b"x", &[7u8; 1000][..]] {
            let r = Record::new(bytes);
            let c = r.clone();
            assert_eq!(&*r, bytes);
            drop(r);
            assert_eq!(&*c, bytes, "a clone outlives the original");
            assert!(Record::ptr_eq(&c, &c.clone()));
            assert!(
                !Record::ptr_eq(&c, &Record::new(bytes)),
                "equal is not shared"
            );
            assert_eq!(c, Record::new(bytes));
        }
    }

    #[test]
    fn a_record_is_a_thin_pointer() {
        assert_eq!(std::mem::size_of::<Record>(), 8);
        assert_eq!(std::mem::size_of::<Option<Record>>(), 8);
        assert_eq!(layout(5).size(), 13, "a header of eight bytes");
    }

    #[test]
    fn clones_dropped_on_other_threads_free_the_record_once() {
        let r = Record::new(b"shared");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let c = r.clone();
                        assert_eq!(&*c, b"shared");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.header().refs.load(Ordering::Relaxed), 1);
    }
}
