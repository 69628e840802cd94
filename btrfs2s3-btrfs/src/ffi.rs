//! The few libbtrfsutil declarations we use, written by hand from `<btrfsutil.h>` (library
//! version 1.2) so that building needs the library, not libclang.

use std::ffi::{c_char, c_int, c_void};

/// `enum btrfs_util_error`: 0 is success.
pub type BtrfsUtilError = c_int;

pub const BTRFS_UTIL_OK: BtrfsUtilError = 0;
pub const BTRFS_UTIL_ERROR_NOT_BTRFS: BtrfsUtilError = 4;
pub const BTRFS_UTIL_ERROR_NOT_SUBVOLUME: BtrfsUtilError = 5;

/// `BTRFS_UTIL_CREATE_SNAPSHOT_READ_ONLY`.
pub const CREATE_SNAPSHOT_READ_ONLY: c_int = 1 << 1;

/// `struct btrfs_util_subvolume_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SubvolumeInfo {
    pub id: u64,
    pub parent_id: u64,
    pub dir_id: u64,
    pub flags: u64,
    pub uuid: [u8; 16],
    pub parent_uuid: [u8; 16],
    pub received_uuid: [u8; 16],
    pub generation: u64,
    pub ctransid: u64,
    pub otransid: u64,
    pub stransid: u64,
    pub rtransid: u64,
    pub ctime: libc::timespec,
    pub otime: libc::timespec,
    pub stime: libc::timespec,
    pub rtime: libc::timespec,
}

// Linked by build.rs: statically where the archive is installed.
unsafe extern "C" {
    pub fn btrfs_util_subvolume_info_fd(
        fd: c_int,
        id: u64,
        subvol: *mut SubvolumeInfo,
    ) -> BtrfsUtilError;

    pub fn btrfs_util_create_snapshot_fd2(
        fd: c_int,
        parent_fd: c_int,
        name: *const c_char,
        flags: c_int,
        unused: *mut u64,
        qgroup_inherit: *mut c_void,
    ) -> BtrfsUtilError;

    pub fn btrfs_util_delete_subvolume_fd(
        parent_fd: c_int,
        name: *const c_char,
        flags: c_int,
    ) -> BtrfsUtilError;

    pub fn btrfs_util_set_subvolume_read_only_fd(fd: c_int, read_only: bool) -> BtrfsUtilError;

    pub fn btrfs_util_strerror(err: BtrfsUtilError) -> *const c_char;
}

/// `struct btrfs_ioctl_send_args` from `<linux/btrfs.h>`.
#[repr(C)]
#[derive(Debug)]
pub struct SendArgs {
    pub send_fd: i64,
    pub clone_sources_count: u64,
    pub clone_sources: *const u64,
    pub parent_root: u64,
    pub flags: u64,
    pub version: u32,
    pub reserved: [u8; 28],
}

/// `BTRFS_SEND_FLAG_VERSION`: `version` is set.
pub const SEND_FLAG_VERSION: u64 = 0x8;
/// `BTRFS_SEND_FLAG_COMPRESSED`: send compressed extents as they are (protocol 2+).
pub const SEND_FLAG_COMPRESSED: u64 = 0x10;

/// `struct btrfs_ioctl_fs_info_args` from `<linux/btrfs.h>` (1024 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct FsInfoArgs {
    pub max_id: u64,
    pub num_devices: u64,
    pub fsid: [u8; 16],
    pub nodesize: u32,
    pub sectorsize: u32,
    pub clone_alignment: u32,
    pub csum_type: u16,
    pub csum_size: u16,
    pub flags: u64,
    pub generation: u64,
    pub metadata_uuid: [u8; 16],
    pub reserved: [u8; 944],
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;

nix::ioctl_write_ptr!(btrfs_ioc_send, BTRFS_IOCTL_MAGIC, 38, SendArgs);
nix::ioctl_read!(btrfs_ioc_fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel_and_the_library() {
        assert_eq!(std::mem::size_of::<SendArgs>(), 72);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        // 4 u64, 3 uuids, 5 u64, 4 timespecs.
        assert_eq!(
            std::mem::size_of::<SubvolumeInfo>(),
            4 * 8 + 3 * 16 + 5 * 8 + 4 * 16
        );
    }
}
