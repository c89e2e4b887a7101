//! One test per meter driver: a pymodbus RTU slave (behind an RTU-over-TCP gateway) loaded
//! with values written the way the meter's datasheet describes them (address, type, word
//! order, unit), independently of the driver file; the agent must read them back as Wh
//! counters and SI gauges with exact decimals, and the nameplate registers as metadata.

mod peer;

use std::collections::BTreeMap;

use chrono::Utc;
use gridmeter_agent::sources::drivers;
use gridmeter_agent::sources::modbus::{ModbusPoller, ModbusSource, RegisterFunction, Transport};
use gridmeter_agent::sources::Source;
use gridmeter_core::{Kind, Quality};
use peer::Peer;

/// Registers as the meter holds them.
#[derive(Default)]
struct Image {
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
}

impl Image {
    fn put(&mut self, f: RegisterFunction, at: u16, words: &[u16]) -> &mut Self {
        let map = match f {
            RegisterFunction::Holding => &mut self.holding,
            RegisterFunction::Input => &mut self.input,
        };
        for (i, w) in words.iter().enumerate() {
            map.insert(at + i as u16, *w);
        }
        self
    }
}

fn f32be(v: f32) -> Vec<u16> {
    let b = v.to_bits();
    vec![(b >> 16) as u16, b as u16]
}
fn u32be(v: u32) -> Vec<u16> {
    vec![(v >> 16) as u16, v as u16]
}
fn i32be(v: i32) -> Vec<u16> {
    u32be(v as u32)
}
/// INT32 with the least significant word first (Carlo Gavazzi).
fn i32le(v: i32) -> Vec<u16> {
    let w = u32be(v as u32);
    vec![w[1], w[0]]
}
fn u64be(v: u64) -> Vec<u16> {
    (0..4).rev().map(|i| (v >> (16 * i)) as u16).collect()
}
fn ascii(s: &str, regs: usize) -> Vec<u16> {
    let mut b = s.as_bytes().to_vec();
    b.resize(regs * 2, 0);
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

use RegisterFunction::{Holding as H, Input as I};

/// Serves `image` (every other register of the driver's map reads 0), polls it with
/// `driver`, and checks `want` (channel, value) and the metadata.
async fn check(driver: &str, image: &mut Image, want: &[(&str, &str)], meta: &[(&str, &str)]) {
    let d = drivers::get(driver).unwrap();
    for r in &d.registers {
        for i in 0..r.data_type.words() {
            let map = match r.function {
                H => &mut image.holding,
                I => &mut image.input,
            };
            map.entry(r.address + i).or_insert(0);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.json");
    let regs = |m: &BTreeMap<u16, u16>| -> BTreeMap<String, u16> {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let doc = serde_json::json!({"units": {"1": {"holding": regs(&image.holding), "input": regs(&image.input)}}});
    std::fs::write(&path, doc.to_string()).unwrap();
    let port = peer::free_port();
    let _gw = Peer::python(
        "modbus_server.py",
        &["--tcp", &port.to_string(), &path.display().to_string()],
    );
    let mut p = ModbusPoller::new(ModbusSource {
        transport: Transport::RtuOverTcp,
        address: format!("127.0.0.1:{port}"),
        driver: Some(driver.into()),
        timeout_ms: 2000,
        ..ModbusSource::default()
    });
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert!(problems.is_empty(), "{driver}: {problems:?}");
    assert_eq!(samples.len(), d.registers.len(), "{driver}");
    let got: BTreeMap<String, (String, Kind, String)> = samples
        .iter()
        .map(|s| {
            (
                s.channel.to_string(),
                (s.value.to_string(), s.kind, s.unit.clone()),
            )
        })
        .collect();
    for (channel, value) in want {
        let (v, kind, unit) = got
            .get(*channel)
            .unwrap_or_else(|| panic!("{driver}: no {channel} in {got:?}"));
        assert_eq!(v, value, "{driver}: {channel}");
        if channel.starts_with("energy_") {
            assert_eq!((*kind, unit.as_str()), (Kind::Counter, "Wh"), "{driver}");
        }
    }
    let meters = Source::meters(&p);
    assert_eq!(meters.len(), 1, "{driver}");
    let m = &meters[0];
    assert_eq!(m.manufacturer.as_deref(), Some(d.manufacturer.as_str()));
    assert_eq!(m.address.as_deref(), Some("unit 1"));
    for (field, value) in meta {
        let got = match *field {
            "serial" => m.serial.as_deref(),
            "model" => m.model.as_deref(),
            "firmware" => m.firmware.as_deref(),
            _ => unreachable!(),
        };
        assert_eq!(got, Some(*value), "{driver}: {field}");
    }
    assert!(m.channels.contains(&"energy_import_wh".to_string()));
}

#[tokio::test]
async fn eastron_sdm630() {
    let mut img = Image::default();
    img.put(I, 0x0000, &f32be(230.1))
        .put(I, 0x0034, &f32be(1234.5))
        .put(I, 0x0046, &f32be(50.0))
        .put(I, 0x0048, &f32be(12345.678))
        .put(I, 0x004A, &f32be(321.5))
        .put(H, 0xFC00, &u32be(20_123_456));
    check(
        "eastron_sdm630",
        &mut img,
        &[
            ("voltage_l1_v", "230.1"),
            ("power_w", "1234.5"),
            ("frequency_hz", "50"),
            ("energy_import_wh", "12345678"),
            ("energy_export_wh", "321500"),
        ],
        &[("serial", "20123456"), ("model", "SDM630")],
    )
    .await;
}

#[tokio::test]
async fn eastron_sdm120() {
    let mut img = Image::default();
    img.put(I, 0x0000, &f32be(230.5))
        .put(I, 0x000C, &f32be(460.25))
        .put(I, 0x0048, &f32be(1520.33))
        .put(H, 0xFC00, &u32be(19_000_001));
    check(
        "eastron_sdm120",
        &mut img,
        &[
            ("voltage_v", "230.5"),
            ("power_w", "460.25"),
            ("energy_import_wh", "1520330"),
            ("energy_export_wh", "0"),
        ],
        &[("serial", "19000001")],
    )
    .await;
}

#[tokio::test]
async fn eastron_sdm72() {
    let mut img = Image::default();
    img.put(I, 0x0034, &f32be(3000.0))
        .put(I, 0x0048, &f32be(98765.4))
        .put(I, 0x004A, &f32be(0.5))
        .put(H, 0xFC00, &u32be(21_000_777));
    check(
        "eastron_sdm72",
        &mut img,
        &[
            ("power_w", "3000"),
            ("energy_import_wh", "98765400"),
            ("energy_export_wh", "500"),
        ],
        &[("serial", "21000777")],
    )
    .await;
}

fn abb_image() -> Image {
    let mut img = Image::default();
    img.put(H, 0x5000, &u64be(1_234_567)) // 12345.67 kWh
        .put(H, 0x5004, &u64be(2500)) // 25.00 kWh
        .put(H, 0x5B00, &u32be(2301)) // 230.1 V
        .put(H, 0x5B0C, &u32be(1234)) // 12.34 A
        .put(H, 0x5B14, &i32be(-150_000)) // -1500.00 W (exporting)
        .put(H, 0x5B2C, &[5002]) // 50.02 Hz
        .put(H, 0x8900, &u32be(12_345_678))
        .put(H, 0x8908, &ascii("1.2.3", 8));
    img
}

#[tokio::test]
async fn abb_b23() {
    let want = [
        ("energy_import_wh", "12345670"),
        ("energy_export_wh", "25000"),
        ("voltage_l1_v", "230.1"),
        ("current_l1_a", "12.34"),
        ("power_w", "-1500"),
        ("frequency_hz", "50.02"),
    ];
    let meta = [
        ("serial", "12345678"),
        ("firmware", "1.2.3"),
        ("model", "B23"),
    ];
    check("abb_b23", &mut abb_image(), &want, &meta).await;
}

#[tokio::test]
async fn abb_b24() {
    let want = [("energy_import_wh", "12345670"), ("power_w", "-1500")];
    check("abb_b24", &mut abb_image(), &want, &[("model", "B24")]).await;
}

#[tokio::test]
async fn carlo_gavazzi_em24() {
    let mut img = Image::default();
    img.put(H, 0x0000, &i32le(2305)) // 230.5 V
        .put(H, 0x000C, &i32le(10_250)) // 10.25 A
        .put(H, 0x0028, &i32le(-12_345)) // -1234.5 W
        .put(H, 0x0033, &[500]) // 50.0 Hz
        .put(H, 0x0034, &i32le(123_456)) // 12345.6 kWh
        .put(H, 0x004E, &i32le(42)) // 4.2 kWh
        .put(H, 0x5000, &ascii("BK1234567", 7));
    check(
        "carlo_gavazzi_em24",
        &mut img,
        &[
            ("voltage_l1_v", "230.5"),
            ("current_l1_a", "10.25"),
            ("power_w", "-1234.5"),
            ("frequency_hz", "50"),
            ("energy_import_wh", "12345600"),
            ("energy_export_wh", "4200"),
        ],
        &[("serial", "BK1234567")],
    )
    .await;
}

#[tokio::test]
async fn schneider_iem3255() {
    let mut img = Image::default();
    // The manual's register numbers are 1-based: register 3204 is address 3203.
    img.put(H, 3203, &u64be(987_654_321))
        .put(H, 3207, &u64be(12_345))
        .put(H, 3059, &f32be(2.5)) // kW
        .put(H, 3027, &f32be(231.2))
        .put(H, 3109, &f32be(49.98))
        .put(H, 49, &ascii("iEM3255", 20))
        .put(H, 129, &u32be(4_242_424));
    check(
        "schneider_iem3255",
        &mut img,
        &[
            ("energy_import_wh", "987654321"),
            ("energy_export_wh", "12345"),
            ("power_w", "2500"),
            ("voltage_l1_v", "231.2"),
            ("frequency_hz", "49.98"),
        ],
        &[("serial", "4242424"), ("model", "iEM3255")],
    )
    .await;
}

#[tokio::test]
async fn janitza_umg604() {
    let mut img = Image::default();
    img.put(H, 19000, &f32be(229.75))
        .put(H, 19026, &f32be(1500.25))
        .put(H, 19050, &f32be(50.01))
        .put(H, 19068, &f32be(123_456.0))
        .put(H, 19076, &f32be(789.5));
    check(
        "janitza_umg604",
        &mut img,
        &[
            ("voltage_l1_v", "229.75"),
            ("power_w", "1500.25"),
            ("frequency_hz", "50.01"),
            ("energy_import_wh", "123456"),
            ("energy_export_wh", "789.5"),
        ],
        &[("model", "UMG 604")],
    )
    .await;
}

/// Every driver of the catalogue has its test above.
#[test]
fn every_driver_is_tested() {
    let src = include_str!("drivers.rs");
    for id in drivers::ids() {
        assert!(
            src.contains(&format!("async fn {id}()")),
            "no test for {id}"
        );
    }
}
