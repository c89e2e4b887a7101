//! Sources against real servers: a Modbus TCP server (tokio-modbus server) with plain
//! registers and a SunSpec image (common model 1, inverter 103, meter 203, MPPT 160,
//! battery 802), a Prometheus
//! text endpoint over HTTP, and this host's procfs.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::Utc;
use gridmeter_agent::sources::host::{self, HostSource};
use gridmeter_agent::sources::modbus::{
    self, ModbusSource, RegisterFunction, RegisterMap, RegisterType, WordOrder,
};
use gridmeter_agent::sources::prometheus::{self as prom, PrometheusSource};
use gridmeter_agent::sources::sunspec::{self, SunspecSource};
use gridmeter_core::{Kind, Quality};
use rust_decimal::Decimal;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};

#[derive(Clone, Default)]
struct Image {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
}

struct ImageService(Arc<Image>);

impl tokio_modbus::server::Service for ImageService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let read = |map: &HashMap<u16, u16>, addr: u16, cnt: u16| {
            (0..cnt)
                .map(|i| map.get(&addr.wrapping_add(i)).copied())
                .collect::<Option<Vec<u16>>>()
                .ok_or(ExceptionCode::IllegalDataAddress)
        };
        std::future::ready(match req {
            Request::ReadHoldingRegisters(a, c) => {
                read(&self.0.holding, a, c).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, c) => {
                read(&self.0.input, a, c).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn serve(image: Image) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let image = Arc::new(image);
    tokio::spawn(async move {
        let on_connected = move |stream, _addr| {
            let svc = ImageService(image.clone());
            async move { Ok(Some((svc, stream))) }
        };
        let _ = server
            .serve(&on_connected, |e| eprintln!("modbus server: {e}"))
            .await;
    });
    addr.to_string()
}

fn put(map: &mut HashMap<u16, u16>, at: u16, words: &[u16]) {
    for (i, w) in words.iter().enumerate() {
        map.insert(at + i as u16, *w);
    }
}

fn sunspec_image() -> Image {
    let mut h = HashMap::new();
    let base = 40000;
    put(&mut h, base, &sunspec::MARKER);
    // Common model 1, 66 registers: manufacturer "gridmeter", model "sim", serial "42".
    let mut common = vec![0u16; 66];
    for (i, pair) in b"gridmeter\0".chunks(2).enumerate() {
        common[i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
    }
    common[16] = u16::from_be_bytes(*b"si");
    common[17] = u16::from_be_bytes([b'm', 0]);
    common[48] = u16::from_be_bytes(*b"42");
    put(&mut h, base + 2, &[1, 66]);
    put(&mut h, base + 4, &common);
    // Inverter model 103, 50 registers.
    let inv_at = base + 4 + 66;
    let mut inv = vec![0u16; 50];
    inv[0] = 125; // A
    inv[4] = (-1i16) as u16; // A_SF -> 12.5 A
    inv[12] = 2500; // W
    inv[13] = 0; // W_SF
    inv[14] = 5001; // Hz
    inv[15] = (-2i16) as u16; // -> 50.01 Hz
    inv[22] = 0x0001; // WH = 0x0001_86A0 = 100000
    inv[23] = 0x86A0;
    inv[24] = 0; // WH_SF
    inv[29] = 0x8000; // DCW not implemented
    inv[31] = 0x8000; // TmpCab not implemented
    put(&mut h, inv_at, &[103, 50]);
    put(&mut h, inv_at + 2, &inv);
    // Meter model 203, 105 registers.
    let m_at = inv_at + 2 + 50;
    let mut m = vec![0u16; 105];
    m[0] = 0x8000; // A not implemented
    m[14] = 500; // Hz
    m[15] = (-1i16) as u16; // -> 50 Hz
    m[16] = (-1500i16) as u16; // W (exporting)
    m[20] = 0; // W_SF
    m[36] = 0; // TotWhExp = 1234
    m[37] = 1234;
    m[44] = 0x0002; // TotWhImp = 131072
    m[45] = 0;
    m[52] = 0; // TotWh_SF
    put(&mut h, m_at, &[203, 105]);
    put(&mut h, m_at + 2, &m);
    // MPPT model 160 with one module, then battery model 802.
    let mppt_at = m_at + 2 + 105;
    let mut mppt = vec![0u16; 8 + 20];
    mppt[1] = (-1i16) as u16; // DCV_SF
    mppt[6] = 1; // N
    mppt[8 + 9] = 0xFFFF; // DCA not implemented
    mppt[8 + 10] = 3987; // 398.7 V
    mppt[8 + 11] = 2400; // W
    mppt[8 + 12] = 0; // DCWH = 777
    mppt[8 + 13] = 777;
    put(&mut h, mppt_at, &[160, 28]);
    put(&mut h, mppt_at + 2, &mppt);
    let bat_at = mppt_at + 2 + 28;
    let mut bat = vec![0xFFFFu16; 62];
    bat[50..62].fill(0); // scale factors
    bat[9] = 64; // SoC 64 %
    bat[42] = 0x8000;
    bat[45] = (-800i16) as u16; // charging 800 W
    put(&mut h, bat_at, &[802, 62]);
    put(&mut h, bat_at + 2, &bat);
    put(&mut h, bat_at + 2 + 62, &[0xFFFF, 0]);
    // Plain registers for the register-map source.
    put(
        &mut h,
        100,
        &[2305, (-5i16) as u16, 0x86A0, 0x0001, 0x4366, 0x8000],
    );
    let mut input = HashMap::new();
    put(&mut input, 7, &[0, 0, 0, 42]);
    Image { holding: h, input }
}

fn reg(
    channel: &str,
    address: u16,
    function: RegisterFunction,
    ty: RegisterType,
    order: WordOrder,
    scale: &str,
    kind: Kind,
) -> RegisterMap {
    RegisterMap {
        channel: channel.into(),
        address,
        function,
        data_type: ty,
        count: None,
        word_order: order,
        scale: scale.into(),
        kind,
        unit: "x".into(),
    }
}

fn values(samples: &[gridmeter_agent::sources::Sample]) -> Vec<(String, String, Kind)> {
    samples
        .iter()
        .map(|s| (s.channel.to_string(), s.value.to_string(), s.kind))
        .collect()
}

fn v(c: &str, val: &str, k: Kind) -> (String, String, Kind) {
    (c.to_string(), val.to_string(), k)
}

#[tokio::test]
async fn modbus_register_map_against_a_real_server() {
    let addr = serve(sunspec_image()).await;
    use RegisterFunction::*;
    use RegisterType::*;
    use WordOrder::*;
    let mut p = modbus::ModbusPoller::new(ModbusSource {
        address: addr,
        timeout_ms: 5000,
        registers: vec![
            reg("voltage", 100, Holding, U16, Big, "0.1", Kind::Gauge),
            reg("temp", 101, Holding, I16, Big, "1", Kind::Gauge),
            reg("energy", 102, Holding, U32, Little, "1", Kind::Counter),
            reg("voltage_f", 104, Holding, F32, Big, "1", Kind::Gauge),
            reg("energy64", 7, Input, U64, Big, "0.001", Kind::Counter),
            reg("missing", 9000, Holding, U16, Big, "1", Kind::Gauge),
        ],
        ..ModbusSource::default()
    });
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert_eq!(
        values(&samples),
        vec![
            v("voltage", "230.5", Kind::Gauge),
            v("temp", "-5", Kind::Gauge),
            v("energy", "100000", Kind::Counter),
            v("voltage_f", "230.5", Kind::Gauge),
            v("energy64", "0.042", Kind::Counter),
        ]
    );
    // The unmapped register is an exception for that register only.
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.starts_with("missing"), "{problems:?}");
    assert_eq!(
        problems[0].reason,
        gridmeter_agent::sources::Reason::Exception
    );
}

#[tokio::test]
async fn sunspec_discovery_and_models_against_a_real_server() {
    let addr = serve(sunspec_image()).await;
    let mut p = sunspec::SunspecPoller::new(SunspecSource {
        name: None,
        interval_ms: 1000,
        address: addr,
        unit_id: 1,
        base: None,
        timeout_ms: 5000,
    });
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        values(&samples),
        vec![
            v("inverter.ac_energy_wh", "100000", Kind::Counter),
            v("inverter.ac_power_w", "2500", Kind::Gauge),
            v("inverter.ac_current_a", "12.5", Kind::Gauge),
            v("inverter.ac_frequency_hz", "50.01", Kind::Gauge),
            v("meter.energy_export_wh", "1234", Kind::Counter),
            v("meter.energy_import_wh", "131072", Kind::Counter),
            v("meter.power_w", "-1500", Kind::Gauge),
            v("meter.frequency_hz", "50", Kind::Gauge),
            v("mppt.1.dc_energy_wh", "777", Kind::Counter),
            v("mppt.1.dc_power_w", "2400", Kind::Gauge),
            v("mppt.1.dc_voltage_v", "398.7", Kind::Gauge),
            v("battery.soc_pct", "64", Kind::Gauge),
            v("battery.power_w", "-800", Kind::Gauge),
        ]
    );
    // A second poll reuses the discovered layout.
    let (again, _) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert_eq!(again.len(), samples.len());
    // Common model 1 is the device's nameplate.
    let m = &gridmeter_agent::sources::Source::meters(&p)[0];
    assert_eq!(
        (
            m.manufacturer.as_deref(),
            m.model.as_deref(),
            m.serial.as_deref()
        ),
        (Some("gridmeter"), Some("sim"), Some("42"))
    );
    assert_eq!(m.protocol, "sunspec");
    assert!(m.channels.contains(&"battery.soc_pct".to_string()));
}

#[tokio::test]
async fn prometheus_scrape_of_a_real_endpoint() {
    let registry = prometheus::Registry::new();
    let requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("http_requests_total", "Requests."),
        &["code", "method"],
    )
    .unwrap();
    registry.register(Box::new(requests.clone())).unwrap();
    requests.with_label_values(&["200", "GET"]).inc_by(5);
    requests.with_label_values(&["500", "POST"]).inc();
    let up = prometheus::Gauge::new("temperature_celsius", "t").unwrap();
    registry.register(Box::new(up.clone())).unwrap();
    up.set(21.25);
    let (addr, task) = gridmeter_core::metrics::serve("127.0.0.1:0".parse().unwrap(), registry)
        .await
        .unwrap();
    let mut p = prom::PromPoller::new(PrometheusSource {
        name: None,
        interval_ms: 1000,
        url: format!("http://{addr}/metrics"),
        include: vec!["http_requests_total".into(), "temperature_celsius".into()],
        rename: [("temperature_celsius".to_string(), "temp".to_string())].into(),
        units: Default::default(),
        max_samples: 10_000,
        max_scrape_bytes: 1 << 20,
        timeout_ms: 5000,
    });
    let (samples, problems) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    assert!(problems.is_empty());
    assert_eq!(
        values(&samples),
        vec![
            v("http_requests_total.200.get", "5", Kind::Counter),
            v("http_requests_total.500.post", "1", Kind::Counter),
            v("temp", "21.25", Kind::Gauge),
        ]
    );
    task.abort();
}

#[tokio::test]
async fn host_metrics_from_procfs() {
    let mut p = host::HostPoller::new(HostSource {
        name: None,
        interval_ms: 1000,
        proc_root: "/proc".into(),
    });
    let (samples, _) = p.poll(Utc::now(), Quality::GOOD).await.unwrap();
    let by: HashMap<String, (Decimal, Kind)> = samples
        .iter()
        .map(|s| (s.channel.to_string(), (s.value, s.kind)))
        .collect();
    assert_eq!(by["cpu_seconds"].1, Kind::Counter);
    assert!(by["cpu_seconds"].0 > Decimal::ZERO);
    assert_eq!(by["memory_used_bytes"].1, Kind::Gauge);
    assert!(by["memory_used_bytes"].0 > Decimal::from_str("1000000").unwrap());
    assert_eq!(by["net.rx_bytes"].1, Kind::Counter);
    assert!(by.contains_key("disk.written_bytes"));
}
