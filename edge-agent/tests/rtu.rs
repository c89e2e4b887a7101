//! Modbus RTU against a real slave: pymodbus on one end of a socat pty pair, the agent on
//! the other; several units on one bus polled in turn, two sources sharing the bus, a
//! silent unit (timeout), a unit whose answers fail their CRC, and RTU over TCP.

mod peer;

use std::collections::BTreeMap;

use chrono::Utc;
use gridmeter_agent::sources::bus::Parity;
use gridmeter_agent::sources::modbus::{
    ModbusPoller, ModbusSource, RegisterFunction, RegisterMap, RegisterType, Transport, WordOrder,
};
use gridmeter_agent::sources::{BuildEnv, Reason, SourceError};
use gridmeter_core::{Kind, Quality};
use peer::{Peer, PtyPair};

fn reg(channel: &str, address: u16, ty: RegisterType, scale: &str, kind: Kind) -> RegisterMap {
    RegisterMap {
        channel: channel.into(),
        address,
        function: RegisterFunction::Holding,
        data_type: ty,
        count: None,
        word_order: WordOrder::Big,
        scale: scale.into(),
        kind,
        unit: "x".into(),
    }
}

/// Writes the image (unit -> holding registers) for the peer.
fn image(dir: &std::path::Path, units: &[(u8, &[(u16, u16)])], corrupt: &[u8]) -> String {
    let units: BTreeMap<String, serde_json::Value> = units
        .iter()
        .map(|(u, regs)| {
            let holding: BTreeMap<String, u16> =
                regs.iter().map(|(a, v)| (a.to_string(), *v)).collect();
            (u.to_string(), serde_json::json!({ "holding": holding }))
        })
        .collect();
    let path = dir.join("image.json");
    let doc = serde_json::json!({
        "baudrate": 9600, "parity": "N", "stopbits": 1,
        "corrupt_units": corrupt, "units": units,
    });
    std::fs::write(&path, doc.to_string()).unwrap();
    path.display().to_string()
}

fn rtu(port: &str, units: Vec<u8>, registers: Vec<RegisterMap>) -> ModbusSource {
    ModbusSource {
        transport: Transport::Rtu,
        port: port.into(),
        baud_rate: Some(9600),
        // A pty refuses parity (tcsetattr: EINVAL); 8N1 here, parity is unit-tested.
        parity: Some(Parity::None),
        stop_bits: Some(1),
        unit_ids: units,
        timeout_ms: 300,
        registers,
        ..ModbusSource::default()
    }
}

fn values(samples: &[gridmeter_agent::sources::Sample]) -> Vec<(String, String)> {
    samples
        .iter()
        .map(|s| (s.channel.to_string(), s.value.to_string()))
        .collect()
}

fn reasons(problems: &[SourceError]) -> Vec<Reason> {
    problems.iter().map(|p| p.reason).collect()
}

#[tokio::test]
async fn units_in_turn_a_silent_one_and_a_shared_bus() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let img = image(
        dir.path(),
        &[
            (1, &[(100, 2305), (101, 0x0001), (102, 0x86A0)]),
            (2, &[(100, 2291), (101, 0x0000), (102, 0x0007)]),
            (9, &[(200, 42)]),
        ],
        &[],
    );
    let _slave = Peer::python("modbus_server.py", &["--serial", &pty.a(), &img]);
    let env = BuildEnv::default();
    let map = vec![
        reg("voltage_v", 100, RegisterType::U16, "0.1", Kind::Gauge),
        reg("energy_wh", 101, RegisterType::U32, "1", Kind::Counter),
    ];
    // Units 1 and 2 answer; unit 3 is not on the bus.
    let mut meters = ModbusPoller::with_env(rtu(&pty.b(), vec![1, 3, 2], map), &env);
    // A second source on the same port (another meter, unit 9).
    let mut other = ModbusPoller::with_env(
        rtu(
            &pty.b(),
            vec![9],
            vec![reg("heat_w", 200, RegisterType::U16, "1", Kind::Gauge)],
        ),
        &env,
    );
    for _ in 0..2 {
        // Both sources poll at once: the bus lock keeps their frames apart.
        let (a, b) = tokio::join!(
            meters.poll(Utc::now(), Quality::GOOD),
            other.poll(Utc::now(), Quality::GOOD)
        );
        let (samples, problems) = a.unwrap();
        assert_eq!(
            values(&samples),
            vec![
                ("u1.voltage_v".into(), "230.5".into()),
                ("u1.energy_wh".into(), "100000".into()),
                ("u2.voltage_v".into(), "229.1".into()),
                ("u2.energy_wh".into(), "7".into()),
            ]
        );
        assert_eq!(reasons(&problems), vec![Reason::Timeout], "{problems:?}");
        assert!(problems[0].message.contains("unit 3"), "{problems:?}");
        let (samples, problems) = b.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(values(&samples), vec![("heat_w".into(), "42".into())]);
    }
    // An unmapped register is an exception for that register only.
    let mut p = ModbusPoller::with_env(
        rtu(
            &pty.b(),
            vec![9],
            vec![
                reg("nope", 999, RegisterType::U16, "1", Kind::Gauge),
                reg("heat_w", 200, RegisterType::U16, "1", Kind::Gauge),
            ],
        ),
        &env,
    );
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert_eq!(values(&samples), vec![("heat_w".into(), "42".into())]);
    assert_eq!(reasons(&problems), vec![Reason::Exception]);
}

#[tokio::test]
async fn a_crc_error_is_counted_and_the_bus_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(dir.path());
    let img = image(dir.path(), &[(1, &[(100, 2305)]), (4, &[(100, 1)])], &[4]);
    let _slave = Peer::python("modbus_server.py", &["--serial", &pty.a(), &img]);
    let map = vec![reg("voltage_v", 100, RegisterType::U16, "0.1", Kind::Gauge)];
    let mut p = ModbusPoller::new(rtu(&pty.b(), vec![4, 1], map));
    for _ in 0..2 {
        let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
        assert_eq!(reasons(&problems), vec![Reason::Crc], "{problems:?}");
        // Unit 1, after the garbled answer of unit 4, on a reopened port.
        assert_eq!(
            values(&samples),
            vec![("u1.voltage_v".into(), "230.5".into())]
        );
    }
}

#[tokio::test]
async fn a_missing_serial_port_is_a_connect_error() {
    let mut p = ModbusPoller::new(rtu(
        "/nonexistent/ttyUSB9",
        vec![1],
        vec![reg("v", 0, RegisterType::U16, "1", Kind::Gauge)],
    ));
    let e = p.poll(Utc::now(), Quality::GOOD).await.unwrap_err();
    assert_eq!(e.reason, Reason::Connect, "{e}");
}

#[tokio::test]
async fn rtu_over_tcp_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let port = peer::free_port();
    let img = image(dir.path(), &[(7, &[(10, 0xFFFF), (11, 0xFFFE)])], &[]);
    let _gw = Peer::python("modbus_server.py", &["--tcp", &port.to_string(), &img]);
    let mut p = ModbusPoller::new(ModbusSource {
        transport: Transport::RtuOverTcp,
        address: format!("127.0.0.1:{port}"),
        unit_id: Some(7),
        timeout_ms: 1000,
        registers: vec![reg("power_w", 10, RegisterType::I32, "1", Kind::Gauge)],
        ..ModbusSource::default()
    });
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(values(&samples), vec![("power_w".into(), "-2".into())]);
}
