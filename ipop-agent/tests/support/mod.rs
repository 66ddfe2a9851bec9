//! The lab (crate ipop-lab) under the names these tests use, the agent binary cargo built for
//! them (the lab finds the same file beside the test executable), and the rendezvous's
//! encrypted channel for the lab's proxy, driven with blocking sockets.

#![allow(dead_code, unused_imports)] // each test binary uses its own share

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use ipop_agent::signaling::channel::{Handshake, Opener, Sealer, framed};
pub use ipop_lab::*;

pub const AGENT: &str = env!("CARGO_BIN_EXE_ipop-agent");

/// A proxy rendezvous in front of `underlay`'s, speaking ipop's channel, with `faults`.
pub fn signaling_proxy(underlay: &Underlay, port: u16, faults: Faults) -> SignalingProxy {
    SignalingProxy::start(underlay, port, faults, Arc::new(NoiseChannel))
}

/// ipop's rendezvous channel (`signaling::channel`) over a blocking socket.
pub struct NoiseChannel;

impl Channel for NoiseChannel {
    fn accept(&self, mut s: TcpStream) -> std::io::Result<Plain> {
        let first = read_frame(&mut s)?;
        let (answer, sealer, opener) = Handshake::server(&first).map_err(std::io::Error::other)?;
        s.write_all(&framed(&answer))?;
        halves(s, sealer, opener)
    }

    fn connect(&self, mut s: TcpStream) -> std::io::Result<Plain> {
        let (handshake, first) = Handshake::client().map_err(std::io::Error::other)?;
        s.write_all(&framed(&first))?;
        let (sealer, opener) = handshake.finish(&read_frame(&mut s)?).map_err(std::io::Error::other)?;
        halves(s, sealer, opener)
    }
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn halves(s: TcpStream, sealer: Sealer, opener: Opener) -> std::io::Result<Plain> {
    let reader = PlainReader { s: s.try_clone()?, opener, plain: Vec::new(), at: 0 };
    Ok((Box::new(reader), Box::new(PlainWriter { s, sealer })))
}

struct PlainReader {
    s: TcpStream,
    opener: Opener,
    plain: Vec<u8>,
    at: usize,
}

impl Read for PlainReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            let frame = match read_frame(&mut self.s) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            };
            self.plain = self.opener.open(&frame).map_err(std::io::Error::other)?;
            self.at = 0;
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

struct PlainWriter {
    s: TcpStream,
    sealer: Sealer,
}

impl Write for PlainWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::new();
        self.sealer.seal(buf, &mut out).map_err(std::io::Error::other)?;
        self.s.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
