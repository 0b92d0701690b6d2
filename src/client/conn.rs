//! A client connection while it logs in. Packets are read whole with as few reads as the
//! client's own writes allow (not a header read and a body read each), and what is owed to the
//! client waits in `out` until the client has to answer it or the login ends: a SCRAM login
//! costs three writes, the last carrying SASLFinal, AuthenticationOk and the login reply.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room made for each read while logging in: a startup packet or a SCRAM message fits.
const LOGIN_READ: usize = 1024;

/// Room for what login writes: SASLFinal, AuthenticationOk and a login reply with a dozen
/// parameters fit, so the buffer is allocated once rather than grown message by message.
const LOGIN_WRITE: usize = 512;

pub struct LoginConn<'a> {
    pub stream: &'a mut TcpStream,
    /// Received and not yet taken. What is left when the login ends is the client's first
    /// request, sent without waiting for ReadyForQuery; the session starts from it.
    pub input: BytesMut,
    /// Owed to the client and not yet written.
    pub out: BytesMut,
}

impl<'a> LoginConn<'a> {
    pub fn new(stream: &'a mut TcpStream) -> LoginConn<'a> {
        LoginConn {
            stream,
            input: BytesMut::new(),
            out: BytesMut::with_capacity(LOGIN_WRITE),
        }
    }

    /// Read until `input` holds at least `n` bytes. Reads are bounded by what the current
    /// packet still needs plus `LOGIN_READ`. Err: the client left or the socket failed.
    pub async fn fill(&mut self, n: usize) -> std::io::Result<()> {
        while self.input.len() < n {
            let wanted = n - self.input.len();
            self.input.reserve(wanted.max(LOGIN_READ));
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Write what is owed, if anything: before waiting for the client's answer to it. `out`
    /// gives up each byte as it is written, so a flush cut short (by the login timeout) leaves
    /// only what is still unsent.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all_buf(&mut self.out).await?;
        // Written bytes still sit in front of the free room; take them back, or the next
        // messages outgrow the room after them and the buffer is allocated again.
        let _ = self.out.try_reclaim(LOGIN_WRITE);
        Ok(())
    }

    /// What the session starts from: unread input, without holding a login-sized buffer
    /// when there is none.
    pub fn take_input(&mut self) -> BytesMut {
        if self.input.is_empty() {
            BytesMut::new()
        } else {
            std::mem::take(&mut self.input)
        }
    }
}
