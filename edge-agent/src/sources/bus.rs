//! Links shared by several sources: one serial port (or one RS-485 gateway) is one bus, and
//! every source on it takes the bus's lock for a whole poll, so request/response frames of
//! different sources never interleave on the wire.
//!
//! [`Buses`] hands out one `Arc<tokio::sync::Mutex<T>>` per (key, link type); the key names
//! the physical bus (`rtu:/dev/ttyUSB0`, `rtu_over_tcp:10.0.0.5:4001`). A [`Counted`]
//! transport counts the bytes it received, so a request that timed out can tell a silent
//! device (nothing came) from a garbled answer (bytes came, no valid frame: a CRC error).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Shared = Arc<dyn Any + Send + Sync>;

/// The agent's shared links, by bus key.
#[derive(Clone, Default)]
pub struct Buses(Arc<Mutex<HashMap<(String, TypeId), Shared>>>);

impl Buses {
    /// The link of bus `key` (created empty on first use).
    pub fn get<T: Default + Send + 'static>(&self, key: &str) -> Arc<tokio::sync::Mutex<T>> {
        let mut map = crate::lock(&self.0);
        let entry = map
            .entry((key.to_string(), TypeId::of::<T>()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(T::default())) as Shared)
            .clone();
        drop(map);
        match entry.downcast::<tokio::sync::Mutex<T>>() {
            Ok(link) => link,
            // Unreachable: the map is keyed by the type id.
            Err(_) => Arc::new(tokio::sync::Mutex::new(T::default())),
        }
    }
}

/// A transport that counts the bytes read from it.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    received: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, received: Arc<AtomicU64>) -> Counted<T> {
        Counted { inner, received }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serial line settings shared by the serial sources (Modbus RTU, M-Bus, IEC 62056-21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Opens a serial port with 8 data bits.
pub fn open_serial(
    port: &str,
    baud: u32,
    parity: Parity,
    stop_bits: u8,
) -> io::Result<tokio_serial::SerialStream> {
    open_serial_bits(port, baud, 8, parity, stop_bits)
}

/// Opens a serial port with 7 or 8 data bits.
pub fn open_serial_bits(
    port: &str,
    baud: u32,
    data_bits: u8,
    parity: Parity,
    stop_bits: u8,
) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop = if stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let bits = if data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    tokio_serial::new(port, baud)
        .data_bits(bits)
        .parity(parity)
        .stop_bits(stop)
        .open_native_async()
        .map_err(io::Error::from)
}

/// Time of `chars` characters on the line (start bit, 8 data bits, parity, stop bits).
pub fn char_time(baud: u32, parity: Parity, stop_bits: u8, chars: f64) -> std::time::Duration {
    let bits = 1.0 + 8.0 + if parity == Parity::None { 0.0 } else { 1.0 } + f64::from(stop_bits);
    std::time::Duration::from_secs_f64(chars * bits / f64::from(baud.max(1)))
}

/// Checks the common serial settings of a config.
pub fn validate_serial(
    at: &str,
    port: &str,
    baud: u32,
    stop_bits: u8,
    problems: &mut gridmeter_core::config::Problems,
) {
    if port.trim().is_empty() {
        problems.push(format!("{at}.port"), "must name a serial device");
    } else if !std::path::Path::new(port).exists() {
        problems.push(
            format!("{at}.port"),
            format!(
                "serial port {} does not exist",
                gridmeter_core::text::excerpt(port)
            ),
        );
    }
    if !(300..=4_000_000).contains(&baud) {
        problems.push(format!("{at}.baud_rate"), "must be 300..=4000000");
    }
    if !(1..=2).contains(&stop_bits) {
        problems.push(format!("{at}.stop_bits"), "must be 1 or 2");
    }
}
