//! The agent's TAP device, opened with `IFF_VNET_HDR` and TSO/checksum offloads
//! (`TUNSETOFFLOAD`), so the bridge hands it whole TCP super-frames (up to 64 KiB) instead of
//! 1514-byte segments, and the agent writes super-frames back the same way: one syscall and
//! one encryption pass per 64 KiB instead of per 1.5 KiB. Each frame read or written is
//! preceded by a 10-byte `virtio_net_hdr` saying how the kernel should segment and checksum it.
//!
//! tun-tap (the crate) cannot ask for `IFF_VNET_HDR` or offloads, hence the few ioctls here.
//! The TAP is not persistent: the kernel deletes it when the agent's fd closes.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io,
    os::fd::{AsRawFd, RawFd},
    os::unix::fs::OpenOptionsExt as _,
};

use anyhow::{Context as _, Result};

use crate::core::vnet::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Creates the TAP `name` with virtio headers and offloads, non-blocking.
    pub fn create(name: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
        anyhow::ensure!(name.len() < libc::IFNAMSIZ, "TAP name {name:?} too long");
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq we own.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("creating TAP device {name}"));
        }
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error()).context("enabling TAP offloads");
        }
        let name = CStr::from_bytes_until_nul(&req.name).context("TAP name")?.to_string_lossy().into_owned();
        Ok(Self { file, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame with its virtio header (`buf` should hold `VNET_HDR_LEN + MAX_FRAME`);
    /// `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes `frame` with virtio header `hdr` into the bridge (it enters at the TAP's ingress).
    pub fn send_with(&self, hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut _, iov_len: hdr.len() },
            libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() },
        ];
        // SAFETY: two iovecs over buffers that outlive the call.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
    }

    /// Writes a plain frame (no offload: checksums complete, no segmentation).
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.send_with(&[0; VNET_HDR_LEN], frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
